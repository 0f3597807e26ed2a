//! The cost of one DeRa decoding step, and what the mixing adds to it.
//!
//! * `mix_chain_sample/V`: what the engine does between the models' forward passes at vocab `V`
//!   with two models: mix `sum_j h_j * c_j` on the device with `[B, 1]` coefficient tensors (the
//!   expression of `Realigner::mix`), read the row back (`try_into_vec_as::<f32>`, split into
//!   rows like `to_rows`), run the processor chain (repetition penalty 1.1, temperature 0.8,
//!   top-k 50, top-p 0.9) and draw a seeded sample. `mix_readback/V` and `chain_sample/V` are
//!   its two halves.
//! * `decode_per_token/{1,2,3}_models`: greedy decoding through `Realigner::generate` with one,
//!   two and three random SmolLM2-135M-shaped models after a 16-token prompt. One criterion
//!   iteration is one generated token: a run of `n + 1` new tokens is timed with the engine's
//!   own decode clock (`Timing`, prefill excluded) and counts as `n` iterations, so the reported
//!   time is `decode wall time / forward steps` = one forward of every model plus one mix and
//!   sample.
//!
//!   Long runs are split into `generate` calls of at most 32 steps, so the context stays short.
//!
//! Criterion measures the three configurations one after the other, and a shared machine's load
//! changes in between, so they are also run interleaved (best of 3 runs of 32 tokens each). The
//! summary at the end prints ms/token, DeRa(K) / single from the interleaved runs, and the share
//! of mixing + processors + sampling in a DeRa(2) step at vocab 49152 (targets: <= 2.1x, <= 2%).
//!
//! `cargo bench -p dera --bench dera_step -- --quick`; `DERA_BENCH_DEVICE=ndarray` (with
//! `--features ndarray`) runs it on ndarray.

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Shape, XorShift, prompt, random_model, share};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use dera::dera_logits::{Context, LogitsProcessor, ProcessorChain, Sampler};
use dera::dera_models::burn::tensor::{Tensor, TensorData};
use dera::dera_models::{Device, LoadedModel};
use dera::{
    Decoding, DeviceKind, GenerateOptions, Mixture, Realigner, Request, SamplingOptions,
    VocabPolicy,
};

const VOCABS: [usize; 4] = [32_000, 49_152, 128_256, 151_936];
const PROMPT_LEN: usize = 16;
/// Most forward steps per `generate` call in the decode bench (context <= 16 + 33 tokens).
const CHUNK: usize = 32;
/// Memory bandwidth measured on the development machine, for the roofline line.
const BANDWIDTH_GBS: f64 = 43.0;

/// Total measured time and iterations per benchmark, for the summary.
static RESULTS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());
/// Best-of-3 interleaved ms/token of 1, 2 and 3 models.
static INTERLEAVED: Mutex<Option<[f64; 3]>> = Mutex::new(None);

fn record(key: &str, d: Duration, iters: u64) {
    let mut r = RESULTS.lock().unwrap();
    let e = r.entry(key.to_string()).or_default();
    e.0 += d;
    e.1 += iters;
}

fn mean_ms(key: &str) -> Option<f64> {
    let r = RESULTS.lock().unwrap();
    r.get(key)
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| d.as_secs_f64() * 1e3 / *n as f64)
}

fn device() -> Device {
    let kind: DeviceKind = std::env::var("DERA_BENCH_DEVICE")
        .unwrap_or_else(|_| "flex".into())
        .parse()
        .expect("DERA_BENCH_DEVICE: flex, ndarray or cuda");
    kind.device().expect("device available in this build")
}

/// Roughly Gaussian logits (std ~3, sum of four uniforms) as a `[1, vocab]` device tensor.
fn logits(vocab: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = XorShift::new(seed);
    let v: Vec<f32> = (0..vocab)
        .map(|_| (0..4).map(|_| rng.next_centered()).sum::<f32>() * 3.0 * 3f32.sqrt())
        .collect();
    Tensor::from_data(TensorData::new(v, [1, vocab]), device)
}

/// `Realigner::mix` for one row: `sum_j h_j * c_j` with `[B, 1]` coefficient tensors built
/// per step, then `to_rows`.
fn mix_to_rows(hs: &[Tensor<2>], coefs: &[f32], device: &Device) -> Vec<Vec<f32>> {
    let mut mixed: Option<Tensor<2>> = None;
    for (h, &c) in hs.iter().zip(coefs) {
        let c = Tensor::<2>::from_data(TensorData::new(vec![c], [1, 1]), device);
        let term = h.clone() * c;
        mixed = Some(match mixed {
            None => term,
            Some(acc) => acc + term,
        });
    }
    let t = mixed.expect("at least one model");
    let [_, v] = t.dims();
    let flat = t.try_into_vec_as::<f32>().expect("readback");
    flat.chunks_exact(v).map(<[f32]>::to_vec).collect()
}

fn bench_mix(c: &mut Criterion) {
    let device = device();
    let opts = SamplingOptions {
        repetition_penalty: Some(1.1),
        temperature: Some(0.8),
        top_k: Some(50),
        top_p: Some(0.9),
        ..Default::default()
    };
    let chain = ProcessorChain::from_options(&opts).expect("valid options");
    let coefs = Mixture::single(0.7).unwrap().coefficients_f32();

    for vocab in VOCABS {
        let hs = [logits(vocab, 1, &device), logits(vocab, 2, &device)];
        let prompt = prompt(32, vocab);
        let generated = common::prompt(96, vocab)[32..].to_vec();
        let ctx = Context::new(&prompt, &generated);

        let mut group = c.benchmark_group("mix_chain_sample");
        group.throughput(Throughput::Elements(vocab as u64));
        let mut sampler = Sampler::seeded(0);
        group.bench_with_input(BenchmarkId::from_parameter(vocab), &vocab, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut rows = mix_to_rows(&hs, &coefs, &device);
                    chain.process(&mut rows[0], &ctx);
                    black_box(sampler.sample(&rows[0]).expect("finite row"));
                }
                let d = start.elapsed();
                record(&format!("mix_chain_sample/{vocab}"), d, iters);
                d
            })
        });
        group.finish();

        let mut group = c.benchmark_group("mix_readback");
        group.bench_with_input(BenchmarkId::from_parameter(vocab), &vocab, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(mix_to_rows(&hs, &coefs, &device));
                }
                let d = start.elapsed();
                record(&format!("mix_readback/{vocab}"), d, iters);
                d
            })
        });
        group.finish();

        let row = mix_to_rows(&hs, &coefs, &device).remove(0);
        let mut group = c.benchmark_group("chain_sample");
        let mut sampler = Sampler::seeded(0);
        group.bench_with_input(BenchmarkId::from_parameter(vocab), &vocab, |b, _| {
            b.iter_batched_ref(
                || row.clone(),
                |row| {
                    chain.process(row, &ctx);
                    black_box(sampler.sample(row).expect("finite row"))
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

fn bench_decode(c: &mut Criterion) {
    let device = device();
    let shape = Shape::SMOLLM2_135M;
    let t = Instant::now();
    let models: Vec<LoadedModel> = (1..=3).map(|s| random_model(&shape, s, &device)).collect();
    eprintln!(
        "built 3 random SmolLM2-135M-shaped models in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let prompt_ids = prompt(PROMPT_LEN, shape.vocab);
    let setups = [
        (1usize, Mixture::reference_only()),
        (2, Mixture::single(0.5).unwrap()),
        (3, Mixture::new(vec![0.3, 0.4]).unwrap()),
    ];

    let mut group = c.benchmark_group("decode_per_token");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut realigners = Vec::new();
    for (k, mixture) in setups {
        let realigner =
            Realigner::from_models(models[..k].iter().map(share).collect(), VocabPolicy::Strict)
                .expect("same vocabularies");
        let request = Request {
            prompt_ids: prompt_ids.clone(),
            mixture,
            seed: None,
        };
        let key = format!("decode/{k}");
        group.bench_function(BenchmarkId::from_parameter(format!("{k}_models")), |b| {
            b.iter_custom(|iters| {
                // `iters` forward steps in runs of at most CHUNK, so the context stays short:
                // a run of `n + 1` tokens (the first sampled from the prefill) counts as `n`.
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(CHUNK);
                    total += decode_time(&realigner, &request, n + 1);
                    left -= n;
                }
                record(&key, total, iters);
                total
            })
        });
        realigners.push((k, realigner, request));
    }
    group.finish();

    // Criterion runs the three configurations one after the other; on a shared machine the load
    // can change in between, so the ratios are also taken from interleaved runs (best of 3).
    let mut best = [f64::INFINITY; 3];
    for _ in 0..3 {
        for (k, r, req) in &realigners {
            let ms = decode_time(r, req, CHUNK + 1).as_secs_f64() * 1e3 / CHUNK as f64;
            best[k - 1] = best[k - 1].min(ms);
        }
    }
    *INTERLEAVED.lock().unwrap() = Some(best);
}

/// Decode wall time (engine clock, prefill excluded) of `n` greedy tokens.
fn decode_time(realigner: &Realigner, request: &Request, n: usize) -> Duration {
    let opts = GenerateOptions::new(Decoding {
        stop_on_eos: false,
        ..Decoding::greedy(n)
    });
    let g = realigner
        .generate(std::slice::from_ref(request), &opts, |_| {})
        .expect("generate");
    assert_eq!(g[0].tokens.len(), n);
    Duration::from_secs_f64(g[0].timing.decode_ms_per_token * n as f64 / 1e3)
}

fn summary() {
    println!("\n=== dera_step summary (means over all measured iterations) ===");
    for vocab in VOCABS {
        if let Some(all) = mean_ms(&format!("mix_chain_sample/{vocab}")) {
            let mix = mean_ms(&format!("mix_readback/{vocab}")).unwrap_or(f64::NAN);
            println!(
                "vocab {vocab:>6}: mix+readback+processors+sample {all:.3} ms (mix+readback {mix:.3} ms)"
            );
        }
    }
    let shape = Shape::SMOLLM2_135M;
    let floor = shape.weight_bytes() as f64 / (BANDWIDTH_GBS * 1e6);
    let single = mean_ms("decode/1");
    for k in 1..=3 {
        if let Some(ms) = mean_ms(&format!("decode/{k}")) {
            let ratio = single.map_or(String::new(), |s| format!(", {:.2}x single", ms / s));
            println!(
                "decode {k} model(s), SmolLM2-135M shape, f32: {ms:.2} ms/token{ratio} (bandwidth floor {:.1} ms at {BANDWIDTH_GBS} GB/s)",
                floor * k as f64
            );
        }
    }
    let interleaved = *INTERLEAVED.lock().unwrap();
    if let Some([s, d2, d3]) = interleaved {
        println!(
            "interleaved best of 3 ({CHUNK} tokens each): single {s:.2}, DeRa(2) {d2:.2}, DeRa(3) {d3:.2} ms/token \
             = 1 : {:.2} : {:.2}",
            d2 / s,
            d3 / s
        );
        let r = d2 / s;
        println!(
            "DeRa(2) step / single step = {r:.2}x (target <= 2.1x): {}",
            if r <= 2.1 { "ok" } else { "MISSED" }
        );
    }
    let d2 = interleaved
        .map(|[_, d2, _]| d2)
        .or_else(|| mean_ms("decode/2"));
    if let (Some(m), Some(d2)) = (mean_ms("mix_chain_sample/49152"), d2) {
        let share = 100.0 * m / d2;
        println!(
            "mixing+processors+sampling at vocab 49152 = {m:.3} ms = {share:.2}% of a DeRa(2) step of {d2:.2} ms (target <= 2%): {}",
            if share <= 2.0 { "ok" } else { "MISSED" }
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_mix(&mut c);
    bench_decode(&mut c);
    c.final_summary();
    summary();
}
