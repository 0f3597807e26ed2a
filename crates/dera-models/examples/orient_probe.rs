//! Which orientation of a dense layer's product is faster on flex: `x W` with `W` stored
//! `[in, out]`, or `(W x^T)^T` with `W` stored `[out, in]` (what `dera-models` does). The weights
//! cycle through about 150 MB of distinct matrices, so they come from memory as in a real decode.
//!
//! `cargo run --release -p dera-models --example orient_probe`

use std::time::Instant;

use dera_models::testing::XorShift;
use dera_models::{Device, Tensor, TensorData};

fn random(rng: &mut XorShift, shape: [usize; 2]) -> Tensor<2> {
    let data = rng.fill(shape[0] * shape[1], 1.0);
    Tensor::from_data(TensorData::new(data, shape), &Device::flex())
}

fn main() {
    let mut rng = XorShift::new(1);
    // (rows, in, out): SmolLM2-135M's MLP, down projection, fused q/k/v and tied head.
    let shapes = [
        (10, 576, 1536),
        (10, 1536, 576),
        (10, 576, 960),
        (1, 576, 1536),
        (10, 576, 49152),
    ];
    for (m, k, n) in shapes {
        let x = random(&mut rng, [m, k]);
        let layers = (150_000_000 / (4 * k * n)).clamp(1, 64);
        let w_in_out: Vec<_> = (0..layers).map(|_| random(&mut rng, [k, n])).collect();
        let w_out_in: Vec<_> = (0..layers).map(|_| random(&mut rng, [n, k])).collect();
        let reps = layers * (200 / layers).max(2);
        let mut best = [f64::INFINITY; 2];
        for _ in 0..5 {
            let t = Instant::now();
            for i in 0..reps {
                let _ = x.clone().matmul(w_in_out[i % layers].clone()).into_data();
            }
            best[0] = best[0].min(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for i in 0..reps {
                let y = w_out_in[i % layers].clone().matmul(x.clone().transpose());
                let _ = y.transpose().into_data();
            }
            best[1] = best[1].min(t.elapsed().as_secs_f64() / reps as f64);
        }
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        println!(
            "{m} x {k} -> {n}: x W {:.3} ms ({:.1} GFLOP/s), (W x^T)^T {:.3} ms ({:.1} GFLOP/s), \
             ratio {:.2}",
            best[0] * 1e3,
            gflop / best[0],
            best[1] * 1e3,
            gflop / best[1],
            best[0] / best[1]
        );
    }
}
