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
//! flex runs every weight format (f32, bf16, q8_0, q4_0: the CPU kernels on all cores); ndarray
//! runs f32 burn tensors. The summary compares each with its floor, weight bytes / the read
//! bandwidth measured by this process (1 GiB sum on the thread pool).
//!
//! `cargo bench -p dera-models --bench decode -- --quick`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use dera_models::testing::{self, Shape};
use dera_models::{
    CausalLm, Device, KvCache, LoadOptions, LoadedModel, Quantization, WeightDtype, WeightFormat,
};

const CONTEXT: usize = 32;

const SHAPE: Shape = Shape::SMOLLM2_135M;
const VOCAB: usize = SHAPE.vocab;
const LAYERS: usize = SHAPE.layers;

fn random_model(layers: usize, seed: u64, device: &Device, opts: &LoadOptions) -> LoadedModel {
    testing::random_model_with(&SHAPE.with_layers(layers), seed, device, opts)
        .expect("load random model")
}

/// Bytes of the weight matrices in `format` (norms are negligible).
fn weight_bytes(format: WeightFormat) -> usize {
    let s = SHAPE;
    let row = |cols: usize| format.row_bytes(cols).expect("block multiple");
    let (qd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    s.layers
        * ((qd + 2 * kvd) * row(s.hidden)
            + s.hidden * row(qd)
            + 2 * s.intermediate * row(s.hidden)
            + s.hidden * row(s.intermediate))
        + s.vocab * row(s.hidden)
}

// --- the bench ------------------------------------------------------------------------------

static RESULTS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn mean_ms(key: &str) -> Option<f64> {
    let r = RESULTS.lock().unwrap();
    r.get(key)
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| d.as_secs_f64() * 1e3 / *n as f64)
}

fn bench_device(
    c: &mut Criterion,
    name: &str,
    device: &Device,
    opts: &LoadOptions,
    layer_split: bool,
) {
    let prompt: Vec<u32> = (0..CONTEXT as u32)
        .map(|i| 1 + i * 997 % (VOCAB as u32 - 1))
        .collect();
    let mut group = c.benchmark_group(format!("decode_step/{name}"));
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let layer_counts: &[usize] = if layer_split { &[LAYERS, 1] } else { &[LAYERS] };
    for &layers in layer_counts {
        let m = random_model(layers, 1, device, opts);
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

fn summary(names: &[(&str, WeightFormat)], bandwidth: f64) {
    println!(
        "\n=== decode summary: batch 1, context {CONTEXT}, SmolLM2-135M shape, {} threads, read bandwidth {bandwidth:.1} GB/s ===",
        rayon::current_num_threads()
    );
    for &(name, format) in names {
        let floor = weight_bytes(format) as f64 / (bandwidth * 1e6);
        let Some(full) = mean_ms(&format!("{name}/{LAYERS}")) else {
            continue;
        };
        let split = mean_ms(&format!("{name}/1")).map_or(String::new(), |one| {
            let per_layer = (full - one) / (LAYERS - 1) as f64;
            format!(
                "; per layer {per_layer:.3} ms ({:.0}% of the step), embedding+norm+head+readback {:.2} ms",
                100.0 * per_layer * LAYERS as f64 / full,
                one - per_layer
            )
        });
        println!(
            "{name}: {full:.2} ms/token ({:.1} tokens/s), floor {floor:.2} ms ({:.2}x the floor){split}",
            1e3 / full,
            full / floor,
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut names = Vec::new();
    for format in [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
    ] {
        let opts = match format {
            WeightFormat::Q8_0 => LoadOptions {
                quantize: Some(Quantization::Q8_0),
                ..Default::default()
            },
            WeightFormat::Q4_0 => LoadOptions {
                quantize: Some(Quantization::Q4_0),
                ..Default::default()
            },
            WeightFormat::Q4_1 => LoadOptions {
                quantize: Some(Quantization::Q4_1),
                ..Default::default()
            },
            WeightFormat::Bf16 => LoadOptions {
                dtype: WeightDtype::Bf16,
                ..Default::default()
            },
            _ => LoadOptions::default(),
        };
        let name = format!("flex-{format}");
        bench_device(
            &mut c,
            &name,
            &Device::flex(),
            &opts,
            format == WeightFormat::F32,
        );
        names.push((name, format));
    }
    #[cfg(feature = "ndarray")]
    {
        bench_device(
            &mut c,
            "ndarray-f32",
            &dera_models::DeviceKind::Ndarray
                .device()
                .expect("ndarray compiled in"),
            &LoadOptions::default(),
            false,
        );
        names.push(("ndarray-f32".to_string(), WeightFormat::F32));
    }
    c.final_summary();
    let names: Vec<(&str, WeightFormat)> = names.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    summary(&names, dera_models::read_bandwidth_gbs());
}
