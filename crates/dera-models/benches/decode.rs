//! One decode step (batch 1) of a random SmolLM2-135M-shaped Llama at a 32-token context.
//!
//! The 32-token prompt is prefilled once, outside the timed loop. Each timed iteration clones
//! the prefilled [`KvCache`] (reference-counted tensors: no copy), runs one new token through
//! [`CausalLm::forward`] and reads the `[1, 1, vocab]` logits back to the host, so one
//! iteration is exactly one decode step at context 33 (the cache append copies as it does in
//! real decoding). The reported time per iteration is ms/token.
//!
//! A 1-layer model of the same shape is timed too, which splits a step into the per-layer cost
//! and the rest (embedding lookup, final norm, tied 49152 x 576 output head, readback).
//!
//! `cargo bench -p dera-models --bench decode -- --quick` (flex);
//! `cargo bench -p dera-models --features ndarray --bench decode -- --quick` adds ndarray.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use dera_models::testing::{self, Shape};
use dera_models::{CausalLm, Device, KvCache, LoadedModel};

const CONTEXT: usize = 32;
/// Memory bandwidth measured on the development machine, for the roofline line.
const BANDWIDTH_GBS: f64 = 43.0;

const SHAPE: Shape = Shape::SMOLLM2_135M;
const VOCAB: usize = SHAPE.vocab;
const LAYERS: usize = SHAPE.layers;

fn random_model(layers: usize, seed: u64, device: &Device) -> LoadedModel {
    testing::random_model(&SHAPE.with_layers(layers), seed, device).expect("load random model")
}

fn weight_bytes(layers: usize) -> usize {
    SHAPE.with_layers(layers).weight_bytes()
}

// --- the bench ------------------------------------------------------------------------------

static RESULTS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn mean_ms(key: &str) -> Option<f64> {
    let r = RESULTS.lock().unwrap();
    r.get(key)
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| d.as_secs_f64() * 1e3 / *n as f64)
}

fn bench_device(c: &mut Criterion, name: &str, device: &Device) {
    let prompt: Vec<u32> = (0..CONTEXT as u32)
        .map(|i| 1 + i * 997 % (VOCAB as u32 - 1))
        .collect();
    let mut group = c.benchmark_group(format!("decode_step/{name}"));
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for layers in [LAYERS, 1] {
        let m = random_model(layers, 1, device);
        let mut prefilled: KvCache = m.model.new_cache();
        let out = m
            .model
            .forward(&prompt, 1, &mut prefilled, false)
            .expect("prefill");
        let _ = out.try_into_vec_as::<f32>().expect("readback");
        let key = format!("{name}/{layers}");
        group.bench_function(BenchmarkId::new("layers", layers), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    let mut cache = prefilled.clone();
                    let tok = 1 + (i as u32 * 31) % (VOCAB as u32 - 1);
                    let out = m
                        .model
                        .forward(&[tok], 1, &mut cache, false)
                        .expect("decode");
                    black_box(out.try_into_vec_as::<f32>().expect("readback"));
                }
                let d = start.elapsed();
                let mut r = RESULTS.lock().unwrap();
                let e = r.entry(key.clone()).or_default();
                e.0 += d;
                e.1 += iters;
                d
            })
        });
    }
    group.finish();
}

fn summary(names: &[&str]) {
    println!("\n=== decode summary: batch 1, context {CONTEXT}, SmolLM2-135M shape, f32 ===");
    let floor = weight_bytes(LAYERS) as f64 / (BANDWIDTH_GBS * 1e6);
    for name in names {
        if let (Some(full), Some(one)) = (
            mean_ms(&format!("{name}/{LAYERS}")),
            mean_ms(&format!("{name}/1")),
        ) {
            let per_layer = (full - one) / (LAYERS - 1) as f64;
            let rest = one - per_layer;
            println!(
                "{name}: {full:.2} ms/token ({:.1} tokens/s); per layer {per_layer:.3} ms ({:.0}% of the step), \
                 embedding+norm+head+readback {rest:.2} ms ({:.0}%); bandwidth floor {floor:.1} ms at {BANDWIDTH_GBS} GB/s ({:.0}% of it reached)",
                1e3 / full,
                100.0 * per_layer * LAYERS as f64 / full,
                100.0 * rest / full,
                100.0 * floor / full,
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    #[allow(unused_mut)]
    let mut names = vec!["flex"];
    bench_device(&mut c, "flex", &Device::flex());
    #[cfg(feature = "ndarray")]
    {
        bench_device(
            &mut c,
            "ndarray",
            &dera_models::DeviceKind::Ndarray
                .device()
                .expect("ndarray compiled in"),
        );
        names.push("ndarray");
    }
    c.final_summary();
    summary(&names);
}
