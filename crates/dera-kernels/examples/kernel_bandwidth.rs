//! Effective read bandwidth of `matmul_t` (one activation row) per weight format, next to a
//! plain 1 GiB sum on the same thread pool: how close the kernel runs to memory speed.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p dera-kernels --example kernel_bandwidth`

use std::time::Instant;

use dera_kernels::simd::Isa;
use dera_kernels::{HostMatrix, WeightFormat, matmul_t_with, read_bandwidth_gbs};

fn main() {
    let (n, k) = (49_152 * 4, 576); // four output heads of SmolLM2-135M: 453 MB in f32
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
    let sum_gbs = read_bandwidth_gbs();
    println!(
        "threads {}: 1 GiB sum {sum_gbs:.1} GB/s",
        rayon::current_num_threads()
    );
    let mut matrices: Vec<(HostMatrix, Vec<f32>)> = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
    ]
    .into_iter()
    .map(|f| (HostMatrix::from_f32(&w, n, k, f).expect("shape"), x.clone()))
    .collect();
    // The K-quants in rows of 512 (k = 576 is not a multiple of their 256-weight super-blocks):
    // the same weights, quantized as llama.cpp does.
    let k4 = 512;
    let x4: Vec<f32> = (0..k4).map(|i| (i % 13) as f32 * 0.1).collect();
    for f in [
        WeightFormat::Q2K,
        WeightFormat::Q3K,
        WeightFormat::Q4K,
        WeightFormat::Q5K,
        WeightFormat::Q6K,
    ] {
        let t = Instant::now();
        let m = HostMatrix::from_f32(&w, n * k / k4, k4, f).expect("shape");
        println!(
            "{f:>5}: {} weights quantized in {:.2} s",
            n * k,
            t.elapsed().as_secs_f64()
        );
        matrices.push((m, x4.clone()));
    }
    for (m, x) in &matrices {
        let format = m.format();
        let bytes = m.bytes().len() as f64;
        for isa in Isa::available() {
            let best = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(matmul_t_with(isa, x, 1, &[m]).expect("product"));
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            println!(
                "{format:>5} {:>8}: {:.2} ms for {:.0} MB = {:.1} GB/s ({:.0}% of the sum)",
                isa.name(),
                best * 1e3,
                bytes / 1e6,
                bytes / best / 1e9,
                100.0 * bytes / best / 1e9 / sum_gbs
            );
        }
    }
}
