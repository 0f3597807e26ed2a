//! Per-step cost of the default sampling chain plus seeded sampling at real vocabulary sizes.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dera_logits::{
    Context, LogitsProcessor, ProcessorChain, Sampler, SamplingOptions, TopP, log_softmax,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const VOCABS: [usize; 4] = [32_000, 49_152, 128_256, 151_936];

/// Gaussian logits (std 3) via Box-Muller, like a language model's raw scores.
fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..vocab)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            (3.0 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn history(vocab: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect()
}

fn bench(c: &mut Criterion) {
    let opts = SamplingOptions {
        repetition_penalty: Some(1.1),
        temperature: Some(0.8),
        top_k: Some(50),
        top_p: Some(0.9),
        ..Default::default()
    };
    let chain = ProcessorChain::from_options(&opts).expect("valid options");

    let mut group = c.benchmark_group("default_chain_and_sample");
    for vocab in VOCABS {
        let logits = random_logits(vocab, 1);
        let prompt = history(vocab, 256, 2);
        let generated = history(vocab, 128, 3);
        let ctx = Context::new(&prompt, &generated);
        let mut sampler = Sampler::seeded(0);
        group.throughput(Throughput::Elements(vocab as u64));
        group.bench_with_input(BenchmarkId::from_parameter(vocab), &vocab, |b, _| {
            b.iter_batched_ref(
                || logits.clone(),
                |row| {
                    chain.process(row, &ctx);
                    black_box(sampler.sample(row).expect("finite row"))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    // The pieces on a full (untruncated) row, for reference.
    let mut group = c.benchmark_group("pieces_151936");
    let vocab = 151_936;
    let logits = random_logits(vocab, 1);
    let ctx = Context::default();
    let top_p = TopP::new(0.9).expect("valid p");
    group.bench_function("top_p_0.9_full_row", |b| {
        b.iter_batched_ref(
            || logits.clone(),
            |row| top_p.process(row, &ctx),
            BatchSize::LargeInput,
        )
    });
    let mut sampler = Sampler::seeded(0);
    group.bench_function("sample_full_row", |b| {
        b.iter(|| black_box(sampler.sample(black_box(&logits)).expect("finite row")))
    });
    group.bench_function("log_softmax", |b| {
        b.iter(|| black_box(log_softmax(black_box(&logits))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
