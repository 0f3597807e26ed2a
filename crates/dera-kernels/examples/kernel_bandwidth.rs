//! Effective read bandwidth of `matmul_t` (one activation row) per weight format, next to a
//! plain 1 GiB sum on the same thread pool: how close the kernel runs to memory speed.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p dera-kernels --example kernel_bandwidth`

use std::time::Instant;

use dera_kernels::simd::Isa;
use dera_kernels::{Bytes, HostMatrix, WeightFormat, matmul_t_with, read_bandwidth_gbs};

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
    ]
    .into_iter()
    .map(|f| (HostMatrix::from_f32(&w, n, k, f).expect("shape"), x.clone()))
    .collect();
    // The K-quants (no quantizer: GGUF files only) as made-up super-blocks of the same number
    // of weights, rows of 512 (a multiple of their 256-weight super-blocks).
    let k4 = 512;
    matrices.push((
        HostMatrix::from_bytes(
            WeightFormat::Q4K,
            n * k / k4,
            k4,
            Bytes::Owned(made_up_q4_k(n * k / 256)),
        )
        .expect("shape"),
        (0..k4).map(|i| (i % 13) as f32 * 0.1).collect(),
    ));
    let mut q5 = made_up_q4_k(n * k / 256 * 2);
    q5.truncate(n * k / 256 * 176);
    for blk in q5.chunks_exact_mut(176) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
        blk[2..4].copy_from_slice(&half::f16::from_f32(0.005).to_bits().to_le_bytes());
    }
    matrices.push((
        HostMatrix::from_bytes(WeightFormat::Q5K, n * k / k4, k4, Bytes::Owned(q5)).expect("shape"),
        (0..k4).map(|i| (i % 13) as f32 * 0.1).collect(),
    ));
    let mut q6 = made_up_q4_k(n * k / 256 * 2);
    q6.truncate(n * k / 256 * 210);
    for blk in q6.chunks_exact_mut(210) {
        blk[208..].copy_from_slice(&half::f16::from_f32(0.002).to_bits().to_le_bytes());
    }
    matrices.push((
        HostMatrix::from_bytes(WeightFormat::Q6K, n * k / k4, k4, Bytes::Owned(q6)).expect("shape"),
        (0..k4).map(|i| (i % 13) as f32 * 0.1).collect(),
    ));
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

/// `blocks` Q4_K super-blocks: small finite `d` and `dmin`, arbitrary scales and nibbles.
fn made_up_q4_k(blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * 144);
    for b in 0..blocks {
        out.extend_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
        out.extend_from_slice(&half::f16::from_f32(0.005).to_bits().to_le_bytes());
        out.extend((0..140).map(|i| ((b * 131 + i * 29) % 251) as u8));
    }
    out
}
