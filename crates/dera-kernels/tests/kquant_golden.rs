//! The K-quant quantizers against ggml's own: `tests/fixtures/gguf/kquant_golden.bin` holds rows
//! (typical weights, wide ranges, all-positive and all-negative rows, zero super-blocks and
//! sub-blocks, outliers, scales below f16's normal range, constants) and their Q4_K, Q5_K and
//! Q6_K super-blocks as ggml's `quantize_row_q{4,5,6}_K_ref` wrote them
//! (`scripts/gguf/kquant_golden.sh`). dera must write the same bytes.

use std::path::Path;

use dera_kernels::quant::{
    Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K, quantize_q4_k, quantize_q5_k, quantize_q6_k,
};
use dera_kernels::{HostMatrix, WeightFormat};

struct Case {
    x: Vec<f32>,
    q4: Vec<u8>,
    q5: Vec<u8>,
    q6: Vec<u8>,
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
