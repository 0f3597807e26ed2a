//! One decode-shaped product (1 and 8 activation rows) per weight format, on the SmolLM2-135M
//! MLP shape (`[3072, 576]`, the fused gate/up) and its output head (`[49152, 576]`).

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

criterion_group!(benches, bench);
criterion_main!(benches);
