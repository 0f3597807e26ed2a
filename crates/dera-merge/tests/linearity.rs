//! The merge is the weighted sum a reader would compute by hand, and rounds exactly once.

mod common;

use common::*;
use dera_checkpoint::Checkpoint;
use dera_merge::{
    Accumulate, MergeInputs, MergeOptions, OutDtype, merge_checkpoints, merge_in_memory,
};
use half::bf16;
use proptest::prelude::*;
use safetensors::Dtype;

fn three_models(xs: &[Vec<f32>; 3], dtype: Dtype) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = xs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let d = tmp.path().join(format!("m{i}"));
            let t = [tensor("w", dtype, &[x.len()], x)];
            write_checkpoint(&d, &t, &llama_config(8));
            d
        })
        .collect();
    (tmp, dirs)
}

fn inputs(dirs: &[std::path::PathBuf], lambdas: [f64; 2]) -> MergeInputs {
    MergeInputs {
        reference: dirs[0].clone(),
        aligned: dirs[1..].to_vec(),
        lambdas: lambdas.to_vec(),
    }
}

fn options(accumulate: Accumulate, dtype: Option<OutDtype>) -> MergeOptions {
    MergeOptions {
        accumulate,
        dtype,
        ..MergeOptions::default()
    }
}

/// `out` is within half a bf16 ulp of `v` (the ulp on `v`'s side), ties going to even.
fn is_rne_bf16(out: bf16, v: f64) -> bool {
    let o = out.to_f64();
    let bits = out.to_bits();
    // Adding one to the bits steps away from zero; pick the neighbour on v's side.
    let toward_v = if v.abs() >= o.abs() {
        bits + 1
    } else {
        bits.wrapping_sub(1)
    };
    let half_ulp = (bf16::from_bits(toward_v).to_f64() - o).abs() / 2.0;
    let err = (o - v).abs();
    err < half_ulp || (err == half_ulp && bits & 1 == 0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// f32 inputs: with f64 accumulation the output is `((c0*x0 + c1*x1) + c2*x2) as f32`
    /// evaluated in f64; with f32 accumulation it is the same expression in f32 and lies
    /// within a few f32 ulps of the f64 value.
    #[test]
    fn weighted_sum_matches_hand_computation(
        x0 in prop::collection::vec(-1e3f32..1e3, 1..40),
        seed in any::<u64>(),
        l1 in -2.0f64..3.0,
        l2 in -2.0f64..3.0,
    ) {
        let n = x0.len();
        let xs = [x0, values(seed, n), values(seed ^ 1, n)];
        let (_tmp, dirs) = three_models(&xs, Dtype::F32);
        let c = [1.0 - (l1 + l2), l1, l2];
        let wide = merge_in_memory(&inputs(&dirs, [l1, l2]), &options(Accumulate::F64, None)).unwrap();
        let narrow = merge_in_memory(&inputs(&dirs, [l1, l2]), &options(Accumulate::F32, None)).unwrap();
        let (w, _) = wide.get("w").unwrap();
        let (f, _) = narrow.get("w").unwrap();
        for i in 0..n {
            let v = c[0] * f64::from(xs[0][i]) + c[1] * f64::from(xs[1][i]) + c[2] * f64::from(xs[2][i]);
            prop_assert_eq!(w[i].to_bits(), (v as f32).to_bits());
            let cf = c.map(|c| c as f32);
            let vf = cf[0] * xs[0][i] + cf[1] * xs[1][i] + cf[2] * xs[2][i];
            prop_assert_eq!(f[i].to_bits(), vf.to_bits());
            let scale: f64 = (0..3).map(|k| (c[k] * f64::from(xs[k][i])).abs()).sum();
            prop_assert!((f64::from(f[i]) - v).abs() <= 4.0 * f64::from(f32::EPSILON) * scale.max(1e-30));
        }
    }

    /// bf16 inputs, bf16 output. With f64 accumulation every element is the round-to-nearest-even
    /// of `c0*x0 + c1*x1 + c2*x2` evaluated in f64 (within half a bf16 ulp, ties to even);
    /// with f32 accumulation it is `bf16::from_f32` of the same expression in f32.
    #[test]
    fn bf16_rounds_once(seed in any::<u64>(), l1 in -1.0f64..2.0, l2 in -1.0f64..2.0) {
        let n = 64;
        let xs = [values(seed, n), values(seed ^ 2, n), values(seed ^ 3, n)]
            .map(|v| v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect::<Vec<_>>());
        let (tmp, dirs) = three_models(&xs, Dtype::BF16);
        let c = [1.0 - (l1 + l2), l1, l2];
        let out = tmp.path().join("out");
        merge_checkpoints(&inputs(&dirs, [l1, l2]), &out, &options(Accumulate::F64, None), None).unwrap();
        let ckpt = Checkpoint::open(&out).unwrap();
        let raw = ckpt.raw("w").unwrap();
        prop_assert_eq!(raw.dtype, Dtype::BF16);
        let narrow = merge_in_memory(&inputs(&dirs, [l1, l2]), &options(Accumulate::F32, None)).unwrap();
        let (f, _) = narrow.get("w").unwrap();
        for i in 0..n {
            let o = bf16::from_bits(u16::from_le_bytes([raw.bytes[2 * i], raw.bytes[2 * i + 1]]));
            let v = c[0] * f64::from(xs[0][i]) + c[1] * f64::from(xs[1][i]) + c[2] * f64::from(xs[2][i]);
            prop_assert!(is_rne_bf16(o, v), "element {}: {} for {}", i, o, v);
            let cf = c.map(|c| c as f32);
            let vf = cf[0] * xs[0][i] + cf[1] * xs[1][i] + cf[2] * xs[2][i];
            prop_assert_eq!(f[i].to_bits(), bf16::from_f32(vf).to_f32().to_bits());
        }
    }
}

/// A sum just above a bf16 tie must round up: `half::bf16::from_f64` would round it down.
#[test]
fn f64_accumulation_keeps_sticky_bits() {
    let x0 = vec![1.0f32; 4];
    let x1 = vec![1.0 + 2f32.powi(-7); 4];
    let (tmp, dirs) = three_models(&[x0.clone(), x1.clone(), x0], Dtype::BF16);
    let lambda = 0.5 + 2f64.powi(-40); // sum = 1 + 2^-8 + 2^-47
    let out = tmp.path().join("out");
    let inputs = inputs(&dirs, [lambda, 0.0]);
    merge_checkpoints(&inputs, &out, &options(Accumulate::F64, None), None).unwrap();
    let (values, _) = Checkpoint::open(&out).unwrap().read_f32("w").unwrap();
    assert!(
        values.iter().all(|&v| v == 1.0 + 2f32.powi(-7)),
        "{values:?}"
    );
    assert_ne!(
        bf16::from_f64(1.0 + 2f64.powi(-8) + 2f64.powi(-47)).to_f32(),
        values[0]
    );
}
