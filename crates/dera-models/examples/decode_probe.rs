//! Times decode steps of a random SmolLM2-135M-shaped model (no files needed).
//!
//! `cargo run --release -p dera-models --example decode_probe -- [layers] [steps]`

use std::time::Instant;

use dera_models::testing::{Shape, random_model};
use dera_models::{CausalLm, Device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let layers: usize = args.next().map_or(Ok(30), |s| s.parse())?;
    let steps: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let shape = Shape::SMOLLM2_135M.with_layers(layers);
    let m = random_model(&shape, 1, &Device::flex())?;
    let mut cache = m.model.new_cache();
    let prompt: Vec<u32> = (0..32).collect();
    let t = Instant::now();
    let _ = m
        .model
        .forward(&prompt, 1, &mut cache, false)?
        .try_into_vec_as::<f32>();
    println!(
        "prefill 32 tokens: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mut tok = 5u32;
    for _ in 0..steps {
        let out = m
            .model
            .forward(&[tok], 1, &mut cache, false)?
            .try_into_vec_as::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        tok = (out
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
            .0
            % 1000) as u32;
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let bytes = shape.weight_bytes() as f64;
    println!(
        "{layers} layers: {ms:.2} ms/token; weights {:.0} MB -> floor at 43 GB/s {:.2} ms",
        bytes / 1e6,
        bytes / 43e6
    );
    Ok(())
}
