//! Write your own `LogitsProcessor`, then run it inside the engine with the built-ins.
//!
//! `cargo run -p dera --example custom_processor` (uses the demo models in `assets/models`).
//!
//! The engine applies, per sequence and step: the built-in penalties and constraints, then the
//! request's own processors (in order), then the built-in warpers (temperature, top-k, top-p,
//! min-p), then the sampler.

use std::path::PathBuf;
use std::sync::Arc;

use dera::dera_logits::{Context, LogitsProcessor, ProcessorChain, Sampler, Temperature, TopK};
use dera::{
    Decoding, DeviceKind, GenerateOptions, Mixture, Realigner, Request, SamplingOptions,
    VocabPolicy,
};

/// Bans every token id that is odd: a toy constraint.
struct EvenTokensOnly;

impl LogitsProcessor for EvenTokensOnly {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        for (id, l) in logits.iter_mut().enumerate() {
            if id % 2 == 1 {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn name(&self) -> &'static str {
        "even_tokens_only"
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // By hand, on one row.
    let chain = ProcessorChain::new()
        .push(EvenTokensOnly)
        .push(Temperature::new(0.7)?)
        .push(TopK::new(2)?);
    let mut logits = vec![1.0, 5.0, 2.0, 4.0, 3.0, 0.5];
    chain.process(&mut logits, &Context::new(&[1, 2], &[]));
    println!("chain {:?} -> {logits:?}", chain.names());
    let token = Sampler::seeded(42).sample(&logits)?;
    assert!(token == 2 || token == 4);

    // Inside the engine, on every step of every sequence of a batch.
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models");
    let r = Realigner::load(
        &models.join("reference"),
        &[models.join("aligned-length")],
        &DeviceKind::Flex.device()?,
        VocabPolicy::Strict,
    )?;
    let options = GenerateOptions {
        decoding: Decoding {
            max_new_tokens: 24,
            sampling: SamplingOptions {
                temperature: Some(0.8),
                ..Default::default()
            },
            ..Default::default()
        },
        processors: vec![Arc::new(EvenTokensOnly)],
    };
    let prompt = r.tokenizer()?.encode("I never did")?;
    let requests: Vec<Request> = [0.0, 1.0]
        .iter()
        .map(|&lambda| {
            Ok(Request {
                prompt_ids: prompt.clone(),
                mixture: Mixture::single(lambda)?,
                seed: None,
            })
        })
        .collect::<Result<_, dera::dera_mix::MixError>>()?;
    for (req, g) in requests
        .iter()
        .zip(r.generate(&requests, &options, |_| {})?)
    {
        assert!(g.tokens.iter().all(|t| t % 2 == 0));
        println!("lambda {:?}: {:?}", req.mixture.lambdas(), g.text);
    }
    Ok(())
}
