//! The read bandwidth of this machine, for the floor of a decode step (weight bytes / bandwidth).

use std::time::Instant;

use rayon::prelude::*;

/// Read bandwidth of the current rayon pool in GB/s: the best of 5 sums over 1 GiB of `f32`
/// (16 independent lanes per chunk, so the sum runs at memory speed, not at add latency).
/// Allocates 1 GiB while it runs.
pub fn read_bandwidth_gbs() -> f64 {
    let data: Vec<f32> = (0..(1usize << 28)).map(|i| (i & 1023) as f32).collect();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let s: f32 = data.par_chunks(1 << 16).map(sum16).sum();
            std::hint::black_box(s);
            (data.len() * 4) as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn sum16(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for v in c.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += v[l];
        }
    }
    acc.iter().sum()
}
