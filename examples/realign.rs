//! Realign two local checkpoints at one lambda and stream the generation.
//!
//! `cargo run -p dera --example realign -- REF_DIR ALIGNED_DIR LAMBDA "prompt"`
//! (defaults: the tiny test fixtures).

use std::io::Write;
use std::path::PathBuf;

use dera::{
    Decoding, DeviceKind, GenerateOptions, Mixture, Realigner, Request, SamplingOptions,
    VocabPolicy,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/models");
    let mut args = std::env::args().skip(1);
    let reference = args.next().map_or(fixtures.join("llama"), PathBuf::from);
    let aligned = args
        .next()
        .map_or(fixtures.join("llama_aligned_a"), PathBuf::from);
    let lambda: f64 = args.next().map_or(Ok(2.0), |s| s.parse())?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "The quick brown fox".to_string());

    let device = DeviceKind::Flex.device()?;
    let realigner = Realigner::load(&reference, &[aligned], &device, VocabPolicy::Strict)?;
    let tokenizer = realigner.tokenizer()?;
    let request = Request {
        prompt_ids: tokenizer.encode(&prompt)?,
        mixture: Mixture::single(lambda)?,
        seed: Some(0),
    };
    let options = GenerateOptions::new(Decoding {
        max_new_tokens: 32,
        sampling: SamplingOptions {
            temperature: Some(0.8),
            top_p: Some(0.95),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut stream = tokenizer.stream();
    print!("{prompt}");
    let out = realigner.generate(&[request], &options, |event| {
        if let Ok(Some(text)) = stream.push(event.token) {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    })?;
    println!(
        "\n[{} tokens, {:.2} ms/token]",
        out[0].tokens.len(),
        out[0].timing.decode_ms_per_token
    );
    Ok(())
}
