//! The cost of a DeRa step with a LoRA-aligned model, on the SmolLM2-135M shape (random
//! weights, f32 as stored, flex device, batch 1 per model, 32-token context).
//!
//! Configurations, each one decode step (one new token, logits read back to the host):
//!
//! * `single`: the reference alone (the floor);
//! * `two_full`: the reference and a second full model, one pass each (DeRa with two checkpoints);
//! * `lora_separate`: the reference and reference + adapter as two passes (the engine with
//!   `Realigner::set_shared_base(false)`: no second copy of the weights, but two passes);
//! * `base_2_rows`: one pass of a 2-row batch of the reference (the shared pass without its
//!   low-rank terms);
//! * `lora_shared`: one pass of a 2-row batch, row 0 the reference, row 1 reference + adapter
//!   ([`dera_models::Model::forward_adapters`]: base products once, low-rank terms on row 1;
//!   what the engine runs by default).
//!
//! LoRA adapters of rank 8 and 64 on q/k/v/o + gate/up/down of all 30 layers. The
//! configurations run interleaved, `ROUNDS` rounds of `STEPS` steps; the summary gives the
//! median and best ms/step and their ratios to `single` (target for `lora_shared`: <= 1.25x).
//!
//! `cargo run --release -p dera-models --example lora_step`

use std::time::Instant;

use dera_models::testing::{self, Shape};
use dera_models::{CausalLm, Device, KvCache, LoraWeights, Model};

const SHAPE: Shape = Shape::SMOLLM2_135M;
const CONTEXT: usize = 32;
const STEPS: usize = 10;
const ROUNDS: usize = 11;

/// A prefilled configuration: models with their caches and the row adapters of a shared pass.
enum Config<'a> {
    /// Separate passes, one per model (batch 1 each).
    Separate(Vec<(&'a Model, KvCache)>),
    /// One pass over the base with rows naming their adapters.
    Shared(&'a Model, KvCache, Vec<Option<&'a LoraWeights>>),
}

fn step(c: &Config<'_>, token: u32) -> f32 {
    let mut sum = 0.0;
    match c {
        Config::Separate(models) => {
            for (m, cache) in models {
                let mut cache = cache.clone();
                let out = m.forward(&[token], 1, &mut cache, false).expect("step");
                sum += out.try_into_vec_as::<f32>().expect("readback")[0];
            }
        }
        Config::Shared(m, cache, rows) => {
            let mut cache = cache.clone();
            let tokens = vec![token; rows.len()];
            let out = m
                .forward_adapters(&tokens, rows.len(), &mut cache, rows, false)
                .expect("step");
            sum += out.try_into_vec_as::<f32>().expect("readback")[0];
        }
    }
    sum
}

fn prefill<'a>(models: &[&'a Model], prompt: &[u32]) -> Config<'a> {
    Config::Separate(
        models
            .iter()
            .map(|m| {
                let mut cache = m.new_cache();
                m.forward(prompt, 1, &mut cache, false).expect("prefill");
                (*m, cache)
            })
            .collect(),
    )
}

fn prefill_shared<'a>(
    base: &'a Model,
    rows: Vec<Option<&'a LoraWeights>>,
    prompt: &[u32],
) -> Config<'a> {
    let mut cache = base.new_cache();
    let tokens: Vec<u32> = rows.iter().flat_map(|_| prompt.iter().copied()).collect();
    base.forward_adapters(&tokens, rows.len(), &mut cache, &rows, false)
        .expect("prefill");
    Config::Shared(base, cache, rows)
}

fn main() {
    let device = Device::flex();
    let reference = testing::random_model(&SHAPE, 1, &device).expect("reference");
    let other = testing::random_model(&SHAPE, 2, &device).expect("second model");
    let base = &reference.model;
    let prompt = testing::prompt(CONTEXT, SHAPE.vocab);
    let loras: Vec<(usize, LoraWeights)> = [8, 64]
        .into_iter()
        .map(|r| {
            let a = testing::random_adapter(&SHAPE, r, 10 + r as u64).expect("adapter");
            (
                r,
                LoraWeights::from_adapter(base, &a).expect("adapter fits"),
            )
        })
        .collect();
    let adapted: Vec<Model> = loras.iter().map(|(_, l)| base.with_adapter(l)).collect();
    let mut configs: Vec<(String, Config<'_>)> = vec![
        ("single".into(), prefill(&[base], &prompt)),
        ("two_full".into(), prefill(&[base, &other.model], &prompt)),
        (
            "base_2_rows".into(),
            prefill_shared(base, vec![None, None], &prompt),
        ),
    ];
    for ((r, l), m) in loras.iter().zip(&adapted) {
        configs.push((format!("lora_separate_r{r}"), prefill(&[base, m], &prompt)));
        configs.push((
            format!("lora_shared_r{r}"),
            prefill_shared(base, vec![None, Some(l)], &prompt),
        ));
    }
    println!(
        "SmolLM2-135M shape, f32, flex on {} threads, context {CONTEXT}, {ROUNDS} rounds x {STEPS} steps",
        rayon::current_num_threads()
    );
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut sink = 0.0;
    for (_, c) in &configs {
        sink += step(c, 5); // warm-up
    }
    for round in 0..ROUNDS {
        for (i, (_, c)) in configs.iter().enumerate() {
            let t = Instant::now();
            for s in 0..STEPS {
                sink += step(c, (7 + s * 31 + round) as u32);
            }
            times[i].push(t.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    // The fastest round of each: the least disturbed by other load on a shared machine.
    let best: Vec<f64> = times.iter().map(|v| v[0]).collect();
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10}",
        "config", "median ms", "x single", "best ms", "x single"
    );
    for (i, (name, _)) in configs.iter().enumerate() {
        println!(
            "{name:<20} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            medians[i],
            medians[i] / medians[0],
            best[i],
            best[i] / best[0]
        );
    }
    std::hint::black_box(sink);
}
