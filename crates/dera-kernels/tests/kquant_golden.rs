//! The K-quant and 5-bit quantizers against ggml's own: `tests/fixtures/gguf/kquant_golden.bin`
//! holds rows (typical weights, wide ranges, all-positive and all-negative rows, zero
//! super-blocks and sub-blocks, outliers, scales below f16's normal range, constants) and their
//! Q2_K, Q3_K, Q4_K, Q5_K and Q6_K super-blocks and Q5_0 and Q5_1 blocks as ggml's
//! `quantize_row_q{2,3,4,5,6}_K_ref` and `quantize_row_q5_{0,1}_ref` wrote them
//! (`scripts/gguf/kquant_golden.sh`). dera must write the same bytes.

use std::path::Path;

use dera_kernels::quant::{
    BLOCK, Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES,
    QK_K, quantize_q2_k, quantize_q3_k, quantize_q4_k, quantize_q5_0, quantize_q5_1, quantize_q5_k,
    quantize_q6_k,
};
use dera_kernels::{HostMatrix, WeightFormat};

struct Case {
    x: Vec<f32>,
    q4: Vec<u8>,
    q5: Vec<u8>,
    q6: Vec<u8>,
    q50: Vec<u8>,
    q51: Vec<u8>,
    q3: Vec<u8>,
    q2: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/kquant_golden.bin");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut at = 0;
    let mut take = |n: usize| {
        let s = bytes[at..at + n].to_vec();
        at += n;
        s
    };
    let mut out = Vec::new();
    while out.len() < 10 {
        let n = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let x = take(4 * n)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let sb = n / QK_K;
        out.push(Case {
            x,
            q4: take(sb * Q4_K_BYTES),
            q5: take(sb * Q5_K_BYTES),
            q6: take(sb * Q6_K_BYTES),
            q50: take(n / BLOCK * Q5_0_BYTES),
            q51: take(n / BLOCK * Q5_1_BYTES),
            q3: take(sb * Q3_K_BYTES),
            q2: take(sb * Q2_K_BYTES),
        });
    }
    assert_eq!(at, bytes.len(), "trailing bytes in the fixture");
    out
}

/// The first differing byte, for a readable failure.
fn same(format: &str, block: usize, case: usize, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{format} case {case}");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{format} case {case}: byte {} of super-block {} is {:#04x}, ggml wrote {:#04x}",
            i % block,
            i / block,
            got[i],
            want[i]
        );
    }
}

#[test]
fn k_quants_have_ggmls_bytes() {
    for (c, case) in cases().iter().enumerate() {
        let (mut q4, mut q5, mut q6) = (Vec::new(), Vec::new(), Vec::new());
        quantize_q4_k(&case.x, &mut q4);
        quantize_q5_k(&case.x, &mut q5);
        quantize_q6_k(&case.x, &mut q6);
        same("q4_k", Q4_K_BYTES, c, &q4, &case.q4);
        same("q5_k", Q5_K_BYTES, c, &q5, &case.q5);
        same("q6_k", Q6_K_BYTES, c, &q6, &case.q6);
        let (mut q50, mut q51) = (Vec::new(), Vec::new());
        quantize_q5_0(&case.x, &mut q50);
        quantize_q5_1(&case.x, &mut q51);
        same("q5_0", Q5_0_BYTES, c, &q50, &case.q50);
        same("q5_1", Q5_1_BYTES, c, &q51, &case.q51);
        let mut q3 = Vec::new();
        quantize_q3_k(&case.x, &mut q3);
        same("q3_k", Q3_K_BYTES, c, &q3, &case.q3);
        let mut q2 = Vec::new();
        quantize_q2_k(&case.x, &mut q2);
        same("q2_k", Q2_K_BYTES, c, &q2, &case.q2);
    }
}

/// Through `HostMatrix::from_f32` (one row per case): the same bytes, and the dequantized
/// matrix within each format's step of the input.
#[test]
fn host_matrices_quantize_to_k_quants() {
    let cases = cases();
    let n = cases[0].x.len();
    let x: Vec<f32> = cases.iter().flat_map(|c| c.x.iter().copied()).collect();
    for (format, step) in [
        (WeightFormat::Q2K, 1.0 / 3.0),
        (WeightFormat::Q3K, 1.0 / 7.0),
        (WeightFormat::Q5_0, 1.0 / 31.0),
        (WeightFormat::Q5_1, 1.0 / 31.0),
        (WeightFormat::Q4K, 1.0 / 15.0),
        (WeightFormat::Q5K, 1.0 / 31.0),
        (WeightFormat::Q6K, 1.0 / 32.0),
    ] {
        let m = HostMatrix::from_f32(&x, cases.len(), n, format).unwrap();
        let back = m.to_f32();
        for (r, case) in cases.iter().enumerate() {
            let row = &back[r * n..(r + 1) * n];
            for sb in 0..n / QK_K {
                let range = sb * QK_K..(sb + 1) * QK_K;
                let (lo, hi) = case.x[range.clone()]
                    .iter()
                    .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let worst = row[range.clone()]
                    .iter()
                    .zip(&case.x[range])
                    .fold(0f32, |w, (a, b)| w.max((a - b).abs()));
                // Six-bit sub-block scales and f16 super-block scales cost a little more than
                // one quantization step of the super-block's range (plus f16's subnormal
                // spacing for the 1e-6 row, whose scales f16 can barely hold).
                assert!(
                    worst <= 1.5 * step * (hi - lo) + 1e-5,
                    "{format} row {r} super-block {sb}: error {worst} for range {lo}..{hi}"
                );
            }
        }
    }
}
