//! Greedy decoding ms/token of one random SmolLM2-135M-shaped model and of a two-model DeRa
//! mixture through `Realigner::generate`; the Rust side of `bench/decode/run.sh`.
//!
//! `cargo run --release -p dera --example bench_decode -- [--prompt 32] [--new 64] [--reps 3]
//! [--layers 30] [--lambda 0.5] [--device flex]`
//!
//! ms/token is the engine's `Timing::decode_ms_per_token`: wall time from the first mix after
//! the prefill to the last sampled token, divided by the tokens generated (`new` mixes and
//! `new - 1` forward steps of every model), best of `reps` runs after one warm-up run.
//! `bench/decode/torch_dera.py` measures the same way.

#[path = "../benches/common/mod.rs"]
mod common;

use common::{Shape, prompt, random_model, share};
use dera::{DeviceKind, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut prompt_len = 32usize;
    let mut new = 64usize;
    let mut reps = 3usize;
    let mut layers = Shape::SMOLLM2_135M.layers;
    let mut lambda = 0.5f64;
    let mut kind = DeviceKind::Flex;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--prompt" => prompt_len = value.parse()?,
            "--new" => new = value.parse()?,
            "--reps" => reps = value.parse()?,
            "--layers" => layers = value.parse()?,
            "--lambda" => lambda = value.parse()?,
            "--device" => kind = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let device = kind.device()?;
    let shape = Shape::SMOLLM2_135M.with_layers(layers);
    let reference = random_model(&shape, 1, &device);
    let aligned = random_model(&shape, 2, &device);
    let prompt_ids = prompt(prompt_len, shape.vocab);

    let run = |models: Vec<dera::dera_models::LoadedModel>,
               mixture: Mixture|
     -> Result<f64, Box<dyn std::error::Error>> {
        let r = Realigner::from_models(models, VocabPolicy::Strict)?;
        let request = Request {
            prompt_ids: prompt_ids.clone(),
            mixture,
            seed: None,
        };
        let opts = |n| GenerateOptions {
            max_new_tokens: n,
            greedy: true,
            stop_on_eos: false,
            ..Default::default()
        };
        r.generate(std::slice::from_ref(&request), &opts(4), |_| {})?; // warm-up
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let g = r.generate(std::slice::from_ref(&request), &opts(new), |_| {})?;
            assert_eq!(g[0].tokens.len(), new);
            best = best.min(g[0].timing.decode_ms_per_token);
        }
        Ok(best)
    };
    let single = run(vec![share(&reference)], Mixture::reference_only())?;
    let dera = run(
        vec![share(&reference), share(&aligned)],
        Mixture::single(lambda)?,
    )?;
    println!(
        "dera {kind} threads={} prompt={prompt_len} new={new} layers={layers}: single {single:.2} ms/token, DeRa(2) {dera:.2} ms/token, ratio {:.2}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        dera / single
    );
    println!("RESULT dera single_ms={single:.3} dera2_ms={dera:.3}");
    Ok(())
}
