//! What an 11-lambda sweep costs against one DeRa generation: the sweep decodes every lambda
//! as one batch that shares each model's prompt prefill (the `dera sweep` strategy), so its
//! cost should stay far below 11 generations (target: at most 3x one).
//!
//! `cargo run --release -p dera --example bench_sweep -- [--models DIR] [--prompt 16] [--new 64]
//! [--reps 5] [--lambdas 11]`
//!
//! Without `--models`, two random SmolLM2-135M-shaped models; with it, `DIR/reference` and
//! `DIR/aligned-length` (e.g. the committed `assets/models`). Both runs sample at temperature 1
//! with EOS ignored, so every row generates exactly `--new` tokens; times are end to end
//! (prefill included), best of `reps` after a warm-up, the cases interleaved. A third case moves
//! the grid off lambda 0 and 1 by 0.001, so no row can skip a model (what the skip saves).

#[path = "../benches/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{Shape, prompt, random_model, share};
use dera::dera_models::{self, LoadedModel};
use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut prompt_len = 16usize;
    let mut new = 64usize;
    let mut reps = 5usize;
    let mut lambdas = 11usize;
    let mut models: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--prompt" => prompt_len = value.parse()?,
            "--new" => new = value.parse()?,
            "--reps" => reps = value.parse()?,
            "--lambdas" => lambdas = value.parse()?,
            "--models" => models = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let device = dera_models::Device::flex();
    let (pair, what): (Vec<LoadedModel>, String) = match &models {
        Some(dir) => (
            vec![
                dera_models::load(&dir.join("reference"), &device)?,
                dera_models::load(&dir.join("aligned-length"), &device)?,
            ],
            dir.display().to_string(),
        ),
        None => {
            let shape = Shape::SMOLLM2_135M;
            (
                vec![
                    random_model(&shape, 1, &device),
                    random_model(&shape, 2, &device),
                ],
                "random SmolLM2-135M shape".into(),
            )
        }
    };
    let engine = Realigner::from_models(pair.iter().map(share).collect(), VocabPolicy::Strict)?;
    // Prompt ids below every model's vocabulary.
    let vocab = engine.width().min(1536);
    let ids = prompt(prompt_len, vocab);
    let request = |lambda: f64| -> Result<Request, Box<dyn std::error::Error>> {
        Ok(Request {
            prompt_ids: ids.clone(),
            mixture: Mixture::single(lambda)?,
            seed: Some(7),
        })
    };
    let one = vec![request(0.5)?];
    let sweep = (0..lambdas)
        .map(|i| request(2.0 * i as f64 / (lambdas.max(2) - 1) as f64))
        .collect::<Result<Vec<_>, _>>()?;
    // The same grid moved off the endpoints (lambda 0 and 1 let one model skip its row): what the
    // zero-coefficient skip saves.
    let shifted = (0..lambdas)
        .map(|i| request(2.0 * i as f64 / (lambdas.max(2) - 1) as f64 + 1e-3))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: new,
        stop_on_eos: false,
        ..Default::default()
    });
    let time = |reqs: &[Request]| -> Result<f64, Box<dyn std::error::Error>> {
        let t = Instant::now();
        let g = engine.generate(reqs, &opts, |_| {})?;
        assert!(g.iter().all(|g| g.tokens.len() == new));
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    time(&one)?;
    time(&sweep)?; // warm-up
    let (mut best_one, mut best_sweep, mut best_shifted) =
        (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..reps.max(1) {
        best_one = best_one.min(time(&one)?);
        best_sweep = best_sweep.min(time(&sweep)?);
        best_shifted = best_shifted.min(time(&shifted)?);
    }
    println!(
        "{what}: prompt {prompt_len}, {new} new tokens: one DeRa generation {best_one:.1} ms, \
         {lambdas}-lambda sweep {best_sweep:.1} ms, ratio {:.2} (target <= 3); the grid moved \
         off lambda 0 and 1 (no row skips a model) {best_shifted:.1} ms, ratio {:.2}",
        best_sweep / best_one,
        best_shifted / best_one
    );
    println!(
        "RESULT sweep one_ms={best_one:.3} sweep_ms={best_sweep:.3} \
         no_skip_ms={best_shifted:.3}"
    );
    Ok(())
}
