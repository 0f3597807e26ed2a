//! Write your own `LogitsProcessor` and put it in a chain with the built-ins.
//!
//! `cargo run -p dera --example custom_processor`

use dera::dera_logits::{Context, LogitsProcessor, ProcessorChain, Sampler, Temperature, TopK};

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
    let chain = ProcessorChain::new()
        .push(EvenTokensOnly)
        .push(Temperature::new(0.7)?)
        .push(TopK::new(2)?);
    let mut logits = vec![1.0, 5.0, 2.0, 4.0, 3.0, 0.5];
    chain.process(&mut logits, &Context::new(&[1, 2], &[]));
    println!("chain {:?} -> {logits:?}", chain.names());
    let token = Sampler::seeded(42).sample(&logits)?;
    assert!(token == 2 || token == 4);
    println!("sampled token {token}");
    Ok(())
}
