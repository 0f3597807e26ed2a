//! One decode-shaped product (1 and 8 activation rows) per weight format, on the SmolLM2-135M
//! MLP shape (`[3072, 576]`, the fused gate/up) and its output head (`[49152, 576]`); and the
//! compute-bound batches of a model that stays in cache (the embedded models' gate/up,
//! `[768, 128]` in f16, 1, 7 and 8 rows on one thread: the tiles, their narrower last tile and
//! their joint reductions; and the same matrix in panels of 16 rows).

use criterion::{Criterion, criterion_group, criterion_main};
use dera_kernels::{HostMatrix, WeightFormat, matmul_t};

fn values(n: usize) -> Vec<f32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let k = 576;
    for (name, n) in [("gate_up", 3072), ("head", 49_152)] {
        let w = values(n * k);
        for format in [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
        ] {
            let m = HostMatrix::from_f32(&w, n, k, format).expect("shape");
            for rows in [1usize, 8] {
                let x = values(rows * k);
                c.bench_function(&format!("{name} {format} x{rows}"), |b| {
                    b.iter(|| matmul_t(&x, rows, &[&m]).expect("product"))
                });
            }
        }
    }
}

fn small_batches(c: &mut Criterion) {
    let (n, k) = (768, 128);
    let w = values(n * k);
    let m = HostMatrix::from_f32(&w, n, k, WeightFormat::F16).expect("shape");
    let p = m.clone().with_panels();
    for rows in [1usize, 7, 8] {
        let x = values(rows * k);
        for (what, m) in [("f16", &m), ("f16 panels", &p)] {
            c.bench_function(&format!("small gate_up {what} x{rows} (1 thread)"), |b| {
                b.iter(|| dera_kernels::serial(|| matmul_t(&x, rows, &[m]).expect("product")))
            });
        }
    }
}

criterion_group!(benches, bench, small_batches);
criterion_main!(benches);
