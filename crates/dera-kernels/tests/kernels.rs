//! The block formats against a reference written here from ggml's C code, and the products
//! against `f64` sums of the same (dequantized) weights, on every instruction set this CPU has.

use dera_kernels::simd::Isa;
use dera_kernels::{Bytes, HostMatrix, WeightFormat, matmul_t_with, quant};
use proptest::prelude::*;

/// Every weight format.
const ALL: [WeightFormat; 8] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::F16,
    WeightFormat::Q8_0,
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
];

/// ggml's `GGML_FP32_TO_FP16`, round to nearest even, written out bit by bit (no `half`).
fn fp16_bits(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xFF) as i32;
    let man = x & 0x7F_FFFF;
    if exp == 0xFF {
        return sign | 0x7C00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1F {
        return sign | 0x7C00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let rem = man & 0x1FFF;
    let mut r = ((e as u32) << 10) | (man >> 13);
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1;
    }
    sign | r as u16
}

fn fp16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// `quantize_row_q8_0_ref` from ggml-quants.c.
fn ref_q8_0(x: &[f32]) -> Vec<u8> {
    let mut y = Vec::new();
    for b in x.chunks(32) {
        let mut amax = 0f32;
        for &v in b {
            amax = amax.max(v.abs());
        }
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.extend_from_slice(&fp16_bits(d).to_le_bytes());
        for &v in b {
            let x0 = v * id;
            // C's roundf: half away from zero.
            let r = if x0 >= 0.0 {
                (x0 + 0.5).floor()
            } else {
                (x0 - 0.5).ceil()
            };
            let r = if (x0.abs() - x0.abs().floor()) == 0.5 {
                r
            } else {
                x0.round()
            };
            y.push(r as i8 as u8);
        }
    }
    y
}

/// `quantize_row_q4_0_ref` from ggml-quants.c.
fn ref_q4_0(x: &[f32]) -> Vec<u8> {
    let mut y = Vec::new();
    for b in x.chunks(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.extend_from_slice(&fp16_bits(d).to_le_bytes());
        for j in 0..16 {
            let x0 = b[j] * id;
            let x1 = b[16 + j] * id;
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            y.push(xi0 | (xi1 << 4));
        }
    }
    y
}

/// `quantize_row_q4_1_ref` from ggml-quants.c.
fn ref_q4_1(x: &[f32]) -> Vec<u8> {
    let mut y = Vec::new();
    for b in x.chunks(32) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in b {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.extend_from_slice(&fp16_bits(d).to_le_bytes());
        y.extend_from_slice(&fp16_bits(min).to_le_bytes());
        for j in 0..16 {
            let x0 = (b[j] - min) * id;
            let x1 = (b[16 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            y.push(xi0 | (xi1 << 4));
        }
    }
    y
}

/// ggml's `dequantize_row_q8_0` / `dequantize_row_q4_0` / `dequantize_row_q4_1`.
fn ref_dequant(format: WeightFormat, y: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    match format {
        WeightFormat::Q4_1 => {
            for b in y.chunks(20) {
                let d = fp16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                let m = fp16_to_f32(u16::from_le_bytes([b[2], b[3]]));
                let mut blk = [0f32; 32];
                for j in 0..16 {
                    blk[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                    blk[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
                out.extend(blk);
            }
        }
        WeightFormat::Q8_0 => {
            for b in y.chunks(34) {
                let d = fp16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        _ => {
            for b in y.chunks(18) {
                let d = fp16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                let mut blk = [0f32; 32];
                for j in 0..16 {
                    blk[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
                    blk[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
                out.extend(blk);
            }
        }
    }
    out
}

fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[test]
fn fp16_reference_matches_half() {
    for v in values(9, 20_000, 70_000.0)
        .into_iter()
        .chain(values(3, 2000, 1e-5))
    {
        assert_eq!(fp16_bits(v), half::f16::from_f32(v).to_bits(), "{v}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Quantization and dequantization equal ggml's reference bit for bit, including blocks of
    /// zeros, ties at .5 and outliers.
    #[test]
    fn blocks_match_the_ggml_reference(seed in any::<u64>(), blocks in 1usize..6, scale in 1e-3f32..10.0, zero_block in any::<bool>(), tie in any::<bool>()) {
        let mut x = values(seed, blocks * 32, scale);
        if zero_block {
            x[..32].iter_mut().for_each(|v| *v = 0.0);
        }
        if tie {
            // exact halves after scaling by 127 / amax
            x[32 * (blocks - 1)] = 127.0;
            x[32 * (blocks - 1) + 1] = 0.5;
            x[32 * (blocks - 1) + 2] = -2.5;
        }
        let mut q8 = Vec::new();
        quant::quantize_q8_0(&x, &mut q8);
        prop_assert_eq!(&q8, &ref_q8_0(&x));
        let mut q4 = Vec::new();
        quant::quantize_q4_0(&x, &mut q4);
        prop_assert_eq!(&q4, &ref_q4_0(&x));
        let mut q41 = Vec::new();
        quant::quantize_q4_1(&x, &mut q41);
        prop_assert_eq!(&q41, &ref_q4_1(&x));
        for (format, bytes) in [(WeightFormat::Q8_0, q8), (WeightFormat::Q4_0, q4), (WeightFormat::Q4_1, q41)] {
            let m = HostMatrix::from_bytes(format, 1, x.len(), Bytes::Owned(bytes.clone())).unwrap();
            let want = ref_dequant(format, &bytes);
            prop_assert_eq!(m.to_f32().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }

    /// Every format and instruction set: each output is within f32 rounding of the exact dot
    /// product of the stored (dequantized) weights with the activations (block formats on the
    /// vector paths: plus the rounding of the activations to 16-bit blocks, bounded exactly).
    #[test]
    fn products_match_f64_sums(seed in any::<u64>(), rows in 1usize..40, blocks in 1usize..5, extra in 0usize..31, m in 1usize..10) {
        for (format, panels) in ALL.into_iter().flat_map(|f| [(f, false), (f, true)]) {
            let k = if format.is_quantized() { blocks * 32 } else { blocks * 32 + extra };
            let w = HostMatrix::from_f32(&values(seed, rows * k, 0.5), rows, k, format).unwrap();
            let w = if panels { w.with_panels() } else { w };
            let wf = w.to_f32();
            let x = values(seed ^ 77, m * k, 1.0);
            for isa in Isa::available() {
                let y = matmul_t_with(isa, &x, m, &[&w]).unwrap();
                for c in 0..m {
                    for r in 0..rows {
                        let exact: f64 = (0..k).map(|j| f64::from(wf[r * k + j]) * f64::from(x[c * k + j])).sum();
                        let mag: f64 = (0..k).map(|j| (f64::from(wf[r * k + j]) * f64::from(x[c * k + j])).abs()).sum();
                        let got = f64::from(y[c * rows + r]);
                        // Block formats on the vector paths take the activations in 16-bit
                        // blocks: each value within half a step (max|x in block| / 32767).
                        let int = matches!(format, WeightFormat::Q8_0 | WeightFormat::Q4_0);
                        let rounding: f64 = if int && isa != Isa::Portable {
                            (0..k / 32).map(|b| {
                                let xs = &x[c * k + 32 * b..c * k + 32 * (b + 1)];
                                let step = f64::from(xs.iter().fold(0f32, |a, v| a.max(v.abs()))) / 32767.0;
                                (0..32).map(|i| f64::from(wf[r * k + 32 * b + i]).abs()).sum::<f64>() * step / 2.0
                            }).sum()
                        } else {
                            0.0
                        };
                        prop_assert!((got - exact).abs() <= 1e-6 * mag + 1.001 * rounding + 1e-30, "{format} panels {panels} {isa:?} r{r} c{c}: {got} vs {exact}");
                    }
                }
            }
        }
    }
}

/// Q4_1 blocks are widened to their dequantized values in registers: on every instruction set
/// and batch size, the same bits as the dequantized matrix held as `f32`.
#[test]
fn q4_1_products_have_the_bits_of_the_dequantized_matrix() {
    let (rows, k) = (37, 96);
    let q = HostMatrix::from_f32(&values(9, rows * k, 0.7), rows, k, WeightFormat::Q4_1).unwrap();
    same_bits_as_dequantized(&q);
}

/// Q5_0 and Q5_1 blocks likewise (Q4_1's loop with each value's fifth bit): quantized rows, and
/// made-up blocks whose fifth bits and nibbles take every pattern.
#[test]
fn q5_products_have_the_bits_of_the_dequantized_matrix() {
    let (rows, k) = (37, 96);
    for (format, f16s) in [
        (WeightFormat::Q5_0, &[(0usize, 0.011f32)][..]),
        (WeightFormat::Q5_1, &[(0, 0.009), (2, -0.13)][..]),
    ] {
        let q = HostMatrix::from_f32(&values(11, rows * k, 0.7), rows, k, format).unwrap();
        same_bits_as_dequantized(&q);
        let size = format.block_bytes();
        let bytes = super_blocks(rows as u64 + size as u64, rows * k / 32, size, f16s);
        let q = HostMatrix::from_bytes(format, rows, k, Bytes::Owned(bytes)).unwrap();
        assert!(q.to_f32().iter().all(|v| v.is_finite()), "{format}");
        same_bits_as_dequantized(&q);
    }
}

/// `q`'s products have the bits of its dequantized values held as `f32`, on every instruction
/// set, for 1 to 8 activation rows.
fn same_bits_as_dequantized(q: &HostMatrix) {
    let (rows, k) = (q.rows(), q.cols());
    let f = HostMatrix::from_f32(&q.to_f32(), rows, k, WeightFormat::F32).unwrap();
    for isa in Isa::available() {
        for m in [1, 2, 3, 5, 8] {
            let x = values(10 + m as u64, m * k, 1.0);
            let a = matmul_t_with(isa, &x, m, &[q]).unwrap();
            let b = matmul_t_with(isa, &x, m, &[&f]).unwrap();
            assert_eq!(bits(&a), bits(&b), "{} {isa:?}, {m} rows", q.format());
        }
    }
}

/// `blocks` super-blocks of `size` bytes of pseudo-random content (any scale bytes, nibbles
/// and high bits are valid), with the given finite f16 values at the given byte offsets (the
/// format's `d`, `dmin`).
fn super_blocks(seed: u64, blocks: usize, size: usize, f16s: &[(usize, f32)]) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out: Vec<u8> = (0..blocks * size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect();
    for blk in out.chunks_exact_mut(size) {
        for &(at, v) in f16s {
            blk[at..at + 2].copy_from_slice(&fp16_bits(v).to_le_bytes());
        }
    }
    out
}

/// A `rows x k` matrix of made-up super-blocks of a K-quant `format` (block bytes `size`,
/// f16 scales at `f16s`): finite values, then the products' bits against the dequantized ones.
fn k_quant_has_the_dequantized_bits(format: WeightFormat, size: usize, f16s: &[(usize, f32)]) {
    let (rows, k) = (13, 768);
    let bytes = super_blocks(rows as u64 + size as u64, rows * k / 256, size, f16s);
    let q = HostMatrix::from_bytes(format, rows, k, Bytes::Owned(bytes)).unwrap();
    assert!(q.to_f32().iter().all(|v| v.is_finite()), "{format}");
    same_bits_as_dequantized(&q);
}

/// Q4_K super-blocks are widened like Q4_1: on every instruction set and batch size, the bits
/// of the dequantized matrix held as `f32`.
#[test]
fn q4_k_products_have_the_bits_of_the_dequantized_matrix() {
    k_quant_has_the_dequantized_bits(WeightFormat::Q4K, 144, &[(0, 0.013), (2, 0.007)]);
    // Rows must be whole super-blocks, quantized or read.
    let e = HostMatrix::from_f32(&[0.0; 128], 1, 128, WeightFormat::Q4K).unwrap_err();
    assert!(e.to_string().contains("multiple of 256"), "{e}");
    let e =
        HostMatrix::from_bytes(WeightFormat::Q4K, 1, 128, Bytes::Owned(vec![0; 72])).unwrap_err();
    assert!(e.to_string().contains("multiple of 256"), "{e}");
}

/// Q3_K super-blocks likewise (made-up and quantized): the dequantized matrix's bits.
#[test]
fn q3_k_products_have_the_bits_of_the_dequantized_matrix() {
    k_quant_has_the_dequantized_bits(WeightFormat::Q3K, 110, &[(108, 0.004)]);
    let (rows, k) = (13, 512);
    let q = HostMatrix::from_f32(&values(12, rows * k, 0.7), rows, k, WeightFormat::Q3K).unwrap();
    same_bits_as_dequantized(&q);
}

/// Q2_K super-blocks likewise (made-up and quantized): the dequantized matrix's bits.
#[test]
fn q2_k_products_have_the_bits_of_the_dequantized_matrix() {
    k_quant_has_the_dequantized_bits(WeightFormat::Q2K, 84, &[(80, 0.02), (82, 0.01)]);
    let (rows, k) = (13, 512);
    let q = HostMatrix::from_f32(&values(13, rows * k, 0.7), rows, k, WeightFormat::Q2K).unwrap();
    same_bits_as_dequantized(&q);
}

/// IQ4_NL blocks and IQ4_XS super-blocks (read from GGUF files only; no quantizer) are widened
/// through their 16-value table: the dequantized matrix's bits, on made-up blocks.
#[test]
fn iq4_products_have_the_bits_of_the_dequantized_matrix() {
    let (rows, k) = (13, 768);
    for (format, f16s) in [
        (WeightFormat::Iq4Nl, &[(0usize, 0.0015f32)][..]),
        (WeightFormat::Iq4Xs, &[(0, 0.00005)][..]),
    ] {
        let (size, n) = (format.block_bytes(), format.block_len());
        let bytes = super_blocks(rows as u64 + size as u64, rows * k / n, size, f16s);
        let q = HostMatrix::from_bytes(format, rows, k, Bytes::Owned(bytes)).unwrap();
        assert!(q.to_f32().iter().all(|v| v.is_finite()), "{format}");
        same_bits_as_dequantized(&q);
        let e = HostMatrix::from_f32(&vec![0.0; rows * k], rows, k, format).unwrap_err();
        assert!(e.to_string().contains("does not quantize"), "{e}");
    }
}

/// Q5_K super-blocks likewise: the dequantized matrix's bits.
#[test]
fn q5_k_products_have_the_bits_of_the_dequantized_matrix() {
    k_quant_has_the_dequantized_bits(WeightFormat::Q5K, 176, &[(0, 0.011), (2, 0.006)]);
}

/// Q6_K super-blocks (GGUF files only) likewise: the dequantized matrix's bits.
#[test]
fn q6_k_products_have_the_bits_of_the_dequantized_matrix() {
    k_quant_has_the_dequantized_bits(WeightFormat::Q6K, 210, &[(208, 0.002)]);
}

/// Each format without and with panels (block formats ignore them).
fn with_and_without_panels() -> impl Iterator<Item = (WeightFormat, bool)> {
    ALL.into_iter().flat_map(|f| [(f, false), (f, true)])
}

fn maybe_panels(w: HostMatrix, panels: bool) -> HostMatrix {
    if panels { w.with_panels() } else { w }
}

/// Stacked matrices give their products side by side; a row's bits are the same alone, in a
/// batch, and at any thread count (a stack may mix matrices with and without panels).
#[test]
fn stacking_batching_and_threads_do_not_change_bits() {
    let k = 96;
    for (format, panels) in with_and_without_panels() {
        let a = HostMatrix::from_f32(&values(1, 301 * k, 0.3), 301, k, format).unwrap();
        let a = maybe_panels(a, panels);
        let b = HostMatrix::from_f32(&values(2, 67 * k, 0.3), 67, k, format).unwrap();
        let x = values(5, 9 * k, 1.0);
        for isa in Isa::available() {
            let pool = |t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
            };
            let both = pool(1).install(|| matmul_t_with(isa, &x, 9, &[&a, &b]).unwrap());
            for t in [2, 3, 8] {
                let again = pool(t).install(|| matmul_t_with(isa, &x, 9, &[&a, &b]).unwrap());
                assert_eq!(
                    bits(&both),
                    bits(&again),
                    "{format} {panels} {isa:?} {t} threads"
                );
            }
            let n = 301 + 67;
            for c in 0..9 {
                let alone_a = matmul_t_with(isa, &x[c * k..(c + 1) * k], 1, &[&a]).unwrap();
                let alone_b = matmul_t_with(isa, &x[c * k..(c + 1) * k], 1, &[&b]).unwrap();
                assert_eq!(
                    bits(&both[c * n..c * n + 301]),
                    bits(&alone_a),
                    "{format} {isa:?}"
                );
                assert_eq!(
                    bits(&both[c * n + 301..(c + 1) * n]),
                    bits(&alone_b),
                    "{format} {isa:?}"
                );
            }
        }
    }
}

/// Every batch size (the tiles of four activation rows, and the narrower tile of the last
/// one to three) gives each row the bits it has alone.
#[test]
fn every_batch_size_gives_each_row_its_bits_alone() {
    let k = 70;
    for (format, panels) in with_and_without_panels() {
        let k = if format.is_quantized() { 64 } else { k };
        let w = HostMatrix::from_f32(&values(3, 37 * k, 0.3), 37, k, format).unwrap();
        let w = maybe_panels(w, panels);
        let x = values(9, 11 * k, 1.0);
        for isa in Isa::available() {
            let alone: Vec<Vec<f32>> = (0..11)
                .map(|c| matmul_t_with(isa, &x[c * k..(c + 1) * k], 1, &[&w]).unwrap())
                .collect();
            for m in 1..=11 {
                let y = matmul_t_with(isa, &x[..m * k], m, &[&w]).unwrap();
                for (c, a) in alone.iter().enumerate().take(m) {
                    assert_eq!(
                        bits(&y[c * 37..(c + 1) * 37]),
                        bits(a),
                        "{format} {panels} {isa:?} batch {m} row {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert!(HostMatrix::from_f32(&[0.0; 40], 1, 40, WeightFormat::Q8_0).is_err());
    assert!(HostMatrix::from_bytes(WeightFormat::F32, 2, 3, Bytes::Owned(vec![0; 20])).is_err());
    let a = HostMatrix::from_f32(&[0.0; 64], 2, 32, WeightFormat::F32).unwrap();
    let b = HostMatrix::from_f32(&[0.0; 64], 1, 64, WeightFormat::F32).unwrap();
    assert!(matmul_t_with(Isa::Portable, &[0.0; 32], 1, &[&a, &b]).is_err());
    assert!(matmul_t_with(Isa::Portable, &[0.0; 31], 1, &[&a]).is_err());
    assert!(a.gather_f32(&[2]).is_err());
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A non-finite activation makes a non-finite output on every path (the 16-bit blocks of the
/// vector paths must not round it away).
#[test]
fn non_finite_activations_stay_non_finite() {
    let k = 256;
    for (format, panels) in [
        (WeightFormat::Q8_0, false),
        (WeightFormat::Q4_0, false),
        (WeightFormat::Q4_1, false),
        (WeightFormat::Q5_0, false),
        (WeightFormat::Q5_1, false),
        (WeightFormat::Q2K, false),
        (WeightFormat::Q3K, false),
        (WeightFormat::Q4K, false),
        (WeightFormat::Q5K, false),
        (WeightFormat::Q6K, false),
        (WeightFormat::F32, false),
        (WeightFormat::F16, true),
    ] {
        let w = HostMatrix::from_f32(&values(3, 4 * k, 0.3), 4, k, format).unwrap();
        let w = maybe_panels(w, panels);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = values(4, k, 1.0);
            x[40] = bad;
            for isa in Isa::available() {
                let y = matmul_t_with(isa, &x, 1, &[&w]).unwrap();
                assert!(
                    y.iter().all(|v| !v.is_finite()),
                    "{format} {isa:?} {bad}: {y:?}"
                );
            }
        }
    }
}

/// With panels every output is one fused multiply-add chain over the columns in order: the
/// same bits as that chain written out, on every instruction set, for every batch size and
/// a last panel of any height; the panels hold the stored values (in the stored format).
#[test]
fn panels_are_one_multiply_add_chain_on_every_instruction_set() {
    let k = 70;
    for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::F16] {
        for rows in [1, 16, 37, 130] {
            let w = HostMatrix::from_f32(&values(11, rows * k, 0.3), rows, k, format).unwrap();
            let wf = w.to_f32();
            let w = w.with_panels();
            let size = if format == WeightFormat::F32 { 4 } else { 2 };
            assert!(w.has_panels() && w.panel_bytes() == rows.div_ceil(16) * 16 * k * size);
            let x = values(12, 9 * k, 1.0);
            for m in 1..=9 {
                let want: Vec<u32> = (0..m)
                    .flat_map(|c| (0..rows).map(move |r| (c, r)))
                    .map(|(c, r)| {
                        (0..k)
                            .fold(0f32, |acc, j| x[c * k + j].mul_add(wf[r * k + j], acc))
                            .to_bits()
                    })
                    .collect();
                for isa in Isa::available() {
                    let y = matmul_t_with(isa, &x[..m * k], m, &[&w]).unwrap();
                    assert_eq!(bits(&y), want, "{format} rows {rows} batch {m} {isa:?}");
                }
            }
        }
    }
    // Block formats keep their own kernels.
    let q = HostMatrix::from_f32(&values(1, 64, 0.3), 2, 32, WeightFormat::Q8_0).unwrap();
    assert!(!q.with_panels().has_panels());
}
