//! A multi-reward mixture: one reference, two aligned models, a lambda per reward, and a batch in
//! which every sequence carries its own lambda vector.
//!
//! `cargo run -p dera --example multi_reward -- REF ALIGNED_A ALIGNED_B` (defaults: test fixtures).

use std::path::PathBuf;

use dera::{Decoding, DeviceKind, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/models");
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let reference = args.next().unwrap_or(fixtures.join("llama"));
    let a = args.next().unwrap_or(fixtures.join("llama_aligned_a"));
    let b = args.next().unwrap_or(fixtures.join("llama_aligned_b"));

    let realigner = Realigner::load(
        &reference,
        &[a, b],
        &DeviceKind::Flex.device()?,
        VocabPolicy::Strict,
    )?;
    let prompt = realigner.tokenizer()?.encode("Hello world")?;
    // A small grid over the two rewards; all sequences share one prefill of the prompt.
    let grid = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]];
    let requests: Vec<Request> = grid
        .iter()
        .map(|l| {
            Ok(Request {
                prompt_ids: prompt.clone(),
                mixture: Mixture::new(l.to_vec())?,
                seed: None,
            })
        })
        .collect::<Result<_, dera::dera_mix::MixError>>()?;
    let options = GenerateOptions::new(Decoding::greedy(12));
    for (req, g) in requests
        .iter()
        .zip(realigner.generate(&requests, &options, |_| {})?)
    {
        let score = realigner.score(&req.prompt_ids, &g.tokens, &req.mixture)?;
        println!(
            "lambdas {:?}: KL to reference {:.3}  {:?}",
            req.mixture.lambdas(),
            score.total_kl,
            g.text
        );
    }
    Ok(())
}
