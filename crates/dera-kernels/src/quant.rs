//! llama.cpp's Q8_0, Q4_0 and Q4_1 block formats and its Q4_K, Q5_K and Q6_K super-blocks, byte
//! for byte as GGUF stores them.
//!
//! A row of `k` weights (a multiple of [`BLOCK`]) is `k / 32` blocks in order. Each block starts
//! with its scale `d` as a little-endian f16, followed by:
//! - Q8_0: 32 `i8` values `q`; weight `j` is `q[j] * d`.
//! - Q4_0: 16 bytes; the low nibble of byte `j` is weight `j`, the high nibble weight `j + 16`,
//!   each stored as `q + 8`; weight = `(nibble - 8) * d`.
//! - Q4_1: the block's minimum `m` (f16) after `d`, then 16 bytes of nibbles as Q4_0's;
//!   weight = `nibble * d + m`.
//! - Q5_0: 4 bytes `qh` (a little-endian `u32`: bit `j` is the fifth bit of weight `j`), then
//!   16 bytes of nibbles as Q4_0's; weight = `(q - 16) * d`, `q` the nibble plus 16 for its bit.
//! - Q5_1: the minimum `m` after `d`, then `qh` and the nibbles as Q5_0's; weight = `q * d + m`.
//!
//! K-quant rows are [`QK_K`]-weight super-blocks with per-sub-block scales (see
//! [`dequantize_q4_k`], [`dequantize_q5_k`], [`dequantize_q6_k`]).
//!
//! The quantizers follow ggml's `quantize_row_*_ref` exactly (same rounding, same f16 scales;
//! for the K-quants the same scale search in the same order of f32 operations), so a row
//! quantized here equals the bytes llama.cpp (built without fused multiply-adds) and the `gguf`
//! Python package write.

use half::f16;

pub use crate::kquant::{
    quantize_q2_k, quantize_q3_k, quantize_q4_k, quantize_q5_k, quantize_q6_k,
};

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes of one Q8_0 block (f16 scale + 32 `i8`).
pub const Q8_0_BYTES: usize = 2 + BLOCK;
/// Bytes of one Q4_0 block (f16 scale + 16 bytes of nibbles).
pub const Q4_0_BYTES: usize = 2 + BLOCK / 2;
/// Bytes of one Q4_1 block (f16 scale, f16 minimum, 16 bytes of nibbles).
pub const Q4_1_BYTES: usize = 4 + BLOCK / 2;
/// Bytes of one Q5_0 block (f16 scale, 4 bytes of fifth bits, 16 bytes of nibbles).
pub const Q5_0_BYTES: usize = 6 + BLOCK / 2;
/// Bytes of one Q5_1 block (f16 scale, f16 minimum, 4 bytes of fifth bits, 16 of nibbles).
pub const Q5_1_BYTES: usize = 8 + BLOCK / 2;
/// Weights per K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of one IQ4_NL block (f16 scale, 16 bytes of 4-bit indices into [`KVALUES_IQ4NL`]).
pub const IQ4_NL_BYTES: usize = 2 + BLOCK / 2;
/// Bytes of one IQ4_XS super-block (f16 `d`, 8 six-bit sub-block scales in 2 + 4 bytes, 128 bytes
/// of 4-bit indices).
pub const IQ4_XS_BYTES: usize = 136;
/// The sixteen values IQ4_NL and IQ4_XS indices stand for (ggml's `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
/// Bytes of one Q2_K super-block (16 bytes of 4-bit scales and minimums, 64 of 2-bit values,
/// f16 `d` and `dmin`).
pub const Q2_K_BYTES: usize = 84;
/// Bytes of one Q3_K super-block (32 bytes of high bits, 64 of 2-bit values, 12 of packed 6-bit
/// sub-block scales, f16 `d`).
pub const Q3_K_BYTES: usize = 110;
/// Bytes of one Q4_K super-block (f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and minimums,
/// 128 bytes of nibbles).
pub const Q4_K_BYTES: usize = 144;
/// Bytes of one Q5_K super-block (as Q4_K with 32 bytes of fifth bits before the nibbles).
pub const Q5_K_BYTES: usize = 176;
/// Bytes of one Q6_K super-block (128 bytes of low nibbles, 64 of high bit pairs, 16 signed
/// 8-bit sub-block scales, f16 `d`).
pub const Q6_K_BYTES: usize = 210;

/// Quantizes `x` (a multiple of 32 values) to Q8_0 blocks appended to `out`.
///
/// Per block: `d = max|x| / 127`, `q = round(x / d)` (half away from zero), `d` stored as f16.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(BLOCK));
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|&v| ((v * id).round() as i8) as u8));
    }
}

/// Quantizes `x` (a multiple of 32 values) to Q4_0 blocks appended to `out`.
///
/// Per block: `max` is the value of largest magnitude (sign kept), `d = max / -8`, each weight
/// becomes `min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(BLOCK));
    for block in x.chunks_exact(BLOCK) {
        let max = signed_max(block);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..BLOCK / 2 {
            out.push(nibble(block[j]) | (nibble(block[j + BLOCK / 2]) << 4));
        }
    }
}

/// Quantizes `x` (a multiple of 32 values) to Q4_1 blocks appended to `out`.
///
/// Per block: `d = (max - min) / 15`, each weight becomes `min(15, trunc((x - min) / d +
/// 0.5))`; `d` and `min` stored as f16.
pub fn quantize_q4_1(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(BLOCK));
    for block in x.chunks_exact(BLOCK) {
        let (min, max) = min_max(block);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
        let nibble = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        for j in 0..BLOCK / 2 {
            out.push(nibble(block[j]) | (nibble(block[j + BLOCK / 2]) << 4));
        }
    }
}

/// Quantizes `x` (a multiple of 32 values) to Q5_0 blocks appended to `out`.
///
/// Per block: `max` is the value of largest magnitude (sign kept), `d = max / -16`, each weight
/// becomes `min(31, trunc(x / d + 16.5))`.
pub fn quantize_q5_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(BLOCK));
    for block in x.chunks_exact(BLOCK) {
        let max = signed_max(block);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let level = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
        push_five_bits(block, level, out);
    }
}

/// Quantizes `x` (a multiple of 32 values) to Q5_1 blocks appended to `out`.
///
/// Per block: `d = (max - min) / 31`, each weight becomes `trunc((x - min) / d + 0.5)`; `d` and
/// `min` stored as f16.
pub fn quantize_q5_1(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(BLOCK));
    for block in x.chunks_exact(BLOCK) {
        let (min, max) = min_max(block);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
        let level = |v: f32| ((v - min) * id + 0.5) as u8;
        push_five_bits(block, level, out);
    }
}

/// The value of largest magnitude in `block`, sign kept (the first of equal magnitudes), as
/// ggml's quantizers find it (Q4_0, Q5_0, and the K-quants' `make_qx_quants`).
pub(crate) fn signed_max(block: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in block {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The smallest and largest values of `block`, as ggml's Q4_1/Q5_1 quantizers find them.
fn min_max(block: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in block {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
    }
    (min, max)
}

/// The `qh` word and the nibbles of a 5-bit block whose levels `level` gives.
fn push_five_bits(block: &[f32], level: impl Fn(f32) -> u8, out: &mut Vec<u8>) {
    let mut qh = 0u32;
    let mut qs = [0u8; BLOCK / 2];
    for j in 0..BLOCK / 2 {
        let (a, b) = (level(block[j]), level(block[j + BLOCK / 2]));
        qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= u32::from((a & 0x10) >> 4) << j;
        qh |= u32::from((b & 0x10) >> 4) << (j + BLOCK / 2);
    }
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

/// The 5-bit levels of weights `j` and `j + 16` of a block: nibbles of byte `j` of `qs`, each
/// with its fifth bit from `qh` (bit `j` and bit `j + 16`).
#[inline(always)]
fn five_bits(qh: u32, qs: &[u8], j: usize) -> (u8, u8) {
    let lo = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
    let hi = (qs[j] >> 4) | ((((qh >> (j + BLOCK / 2)) & 1) as u8) << 4);
    (lo, hi)
}

/// Dequantizes Q5_0 blocks to `out` (32 values per block): `(q - 16) * d`.
pub fn dequantize_q5_0(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q5_0_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = block_scale(b);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..BLOCK / 2 {
            let (lo, hi) = five_bits(qh, &b[6..], j);
            o[j] = f32::from(lo as i8 - 16) * d;
            o[j + BLOCK / 2] = f32::from(hi as i8 - 16) * d;
        }
    }
}

/// Dequantizes Q5_1 blocks to `out` (32 values per block): `q * d + m`.
pub fn dequantize_q5_1(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q5_1_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let (d, m) = (block_scale(b), block_scale(&b[2..]));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..BLOCK / 2 {
            let (lo, hi) = five_bits(qh, &b[8..], j);
            o[j] = f32::from(lo) * d + m;
            o[j + BLOCK / 2] = f32::from(hi) * d + m;
        }
    }
}

/// The f16 scale at the start of a block, as f32.
#[inline]
pub fn block_scale(block: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32()
}

/// Dequantizes Q8_0 blocks to `out` (32 values per block).
pub fn dequantize_q8_0(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q8_0_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = block_scale(b);
        for (o, &q) in o.iter_mut().zip(&b[2..]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// Dequantizes Q4_1 blocks to `out` (32 values per block): `nibble * d + m`.
pub fn dequantize_q4_1(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q4_1_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let (d, m) = (block_scale(b), block_scale(&b[2..]));
        for j in 0..BLOCK / 2 {
            o[j] = f32::from(b[4 + j] & 0x0F) * d + m;
            o[j + BLOCK / 2] = f32::from(b[4 + j] >> 4) * d + m;
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K super-block's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The eight sub-block scales `d * sc` and minimums `dmin * m` of a Q4_K (or Q5_K) super-block, as
/// ggml's dequantization computes them (f32 products).
#[inline(always)]
pub fn q4_k_scales(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (block_scale(b), block_scale(&b[2..]));
    let (mut ds, mut ms) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        ds[j] = d * f32::from(sc);
        ms[j] = dmin * f32::from(m);
    }
    (ds, ms)
}

/// Dequantizes Q4_K super-blocks to `out` (256 values each): chunk `c` of 64 weights is the low
/// nibbles of its 32 bytes (sub-block `2c`) then their high nibbles (sub-block `2c + 1`), each
/// `d_sub * q - m_sub`.
pub fn dequantize_q4_k(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q4_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (ds, ms) = q4_k_scales(b);
        for (c, (q, y)) in b[16..]
            .chunks_exact(32)
            .zip(o.chunks_exact_mut(64))
            .enumerate()
        {
            for l in 0..32 {
                y[l] = ds[2 * c] * f32::from(q[l] & 0x0F) - ms[2 * c];
                y[l + 32] = ds[2 * c + 1] * f32::from(q[l] >> 4) - ms[2 * c + 1];
            }
        }
    }
}

/// Dequantizes Q5_K super-blocks to `out` (256 values each): as Q4_K, each nibble of sub-block
/// `j` plus 16 when bit `j` of its byte's high bits is set.
pub fn dequantize_q5_k(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q5_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (ds, ms) = q4_k_scales(b);
        let qh = &b[16..48];
        for (c, (q, y)) in b[48..]
            .chunks_exact(32)
            .zip(o.chunks_exact_mut(64))
            .enumerate()
        {
            for l in 0..32 {
                let lo = (q[l] & 0x0F) | (((qh[l] >> (2 * c)) & 1) << 4);
                let hi = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
                y[l] = ds[2 * c] * f32::from(lo) - ms[2 * c];
                y[l + 32] = ds[2 * c + 1] * f32::from(hi) - ms[2 * c + 1];
            }
        }
    }
}

/// Dequantizes IQ4_NL blocks to `out` (32 values per block): `d * kvalues[q]`, low nibbles
/// first.
pub fn dequantize_iq4_nl(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(IQ4_NL_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = block_scale(b);
        for j in 0..BLOCK / 2 {
            o[j] = d * f32::from(KVALUES_IQ4NL[usize::from(b[2 + j] & 0x0F)]);
            o[j + BLOCK / 2] = d * f32::from(KVALUES_IQ4NL[usize::from(b[2 + j] >> 4)]);
        }
    }
}

/// The eight sub-block scales `d * (ls - 32)` of an IQ4_XS super-block (`ls`: four bits of
/// `scales_l` and two of `scales_h`), as ggml's dequantization computes them.
#[inline(always)]
pub fn iq4_xs_scales(b: &[u8]) -> [f32; 8] {
    let d = block_scale(b);
    let high = u16::from_le_bytes([b[2], b[3]]);
    std::array::from_fn(|ib| {
        let ls =
            ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | ((((high >> (2 * ib)) & 3) as u8) << 4);
        d * (i32::from(ls) - 32) as f32
    })
}

/// Dequantizes IQ4_XS super-blocks to `out` (256 values each): sub-block `ib` of 32 takes 16
/// bytes of indices, low nibbles first, `dl * kvalues[q]`.
pub fn dequantize_iq4_xs(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(IQ4_XS_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let dl = iq4_xs_scales(b);
        for (ib, y) in o.chunks_exact_mut(BLOCK).enumerate() {
            let qs = &b[8 + 16 * ib..8 + 16 * (ib + 1)];
            for (j, &q) in qs.iter().enumerate() {
                y[j] = dl[ib] * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
                y[j + BLOCK / 2] = dl[ib] * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
            }
        }
    }
}

/// The sixteen sub-block scales `d * (sc & 15)` and minimums `dmin * (sc >> 4)` of a Q2_K
/// super-block, as ggml's dequantization computes them (f32 products).
#[inline(always)]
pub fn q2_k_scales(b: &[u8]) -> ([f32; 16], [f32; 16]) {
    let (d, dmin) = (block_scale(&b[80..]), block_scale(&b[82..]));
    (
        std::array::from_fn(|j| d * f32::from(b[j] & 0x0F)),
        std::array::from_fn(|j| dmin * f32::from(b[j] >> 4)),
    )
}

/// Dequantizes Q2_K super-blocks to `out` (256 values each): group `g` of 16 (half `g / 8`,
/// `j = g % 8 / 2`, `s = g % 2`) takes bit pair `j` of bytes `16 + 32 * half + 16 * s ..`;
/// weight = `d_g * q - m_g`.
pub fn dequantize_q2_k(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q2_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (ds, ms) = q2_k_scales(b);
        for (g, y) in o.chunks_exact_mut(16).enumerate() {
            let (half, j, s) = (g / 8, g % 8 / 2, g % 2);
            for (l, y) in y.iter_mut().enumerate() {
                let q = (b[16 + 32 * half + 16 * s + l] >> (2 * j)) & 3;
                *y = ds[g] * f32::from(q) - ms[g];
            }
        }
    }
}

/// The sixteen 6-bit sub-block scales of a Q3_K super-block's 12 packed bytes, minus 32 (ggml's
/// `kmask` unpacking): the low nibbles of bytes 0..8, then their high nibbles, each with two more
/// bits from bytes 8..12.
#[inline(always)]
pub fn q3_k_scale_values(packed: &[u8]) -> [i8; 16] {
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let aux = [
        (a0 & k2) | ((tmp & k1) << 4),
        (a1 & k2) | (((tmp >> 2) & k1) << 4),
        ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
        ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
    ];
    std::array::from_fn(|i| (aux[i / 4].to_le_bytes()[i % 4] as i8).wrapping_sub(32))
}

/// The sixteen sub-block scales `d * (scale - 32)` of a Q3_K super-block, as ggml's
/// dequantization computes them (f32 products).
#[inline(always)]
pub fn q3_k_scales(b: &[u8]) -> [f32; 16] {
    let d = block_scale(&b[108..]);
    let s = q3_k_scale_values(&b[96..108]);
    std::array::from_fn(|j| d * f32::from(s[j]))
}

/// Dequantizes Q3_K super-blocks to `out` (256 values each): group `g` of 16 (half `g / 8`,
/// `j = g % 8 / 2`, `s = g % 2`) takes bit pair `j` of bytes `32 * half + 16 * s ..` of the 2-bit
/// values and bit `4 * half + j` of high-bit bytes `16 * s ..`; weight = `(d * scale) * (q - 4 +
/// 4 * high)`.
pub fn dequantize_q3_k(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q3_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let ds = q3_k_scales(b);
        for (g, y) in o.chunks_exact_mut(16).enumerate() {
            let (half, j, s) = (g / 8, g % 8 / 2, g % 2);
            for (l, y) in y.iter_mut().enumerate() {
                let q = (b[32 + 32 * half + 16 * s + l] >> (2 * j)) & 3;
                let high = (b[16 * s + l] >> (4 * half + j)) & 1;
                *y = ds[g] * f32::from(q as i8 - 4 + 4 * high as i8);
            }
        }
    }
}

/// The sixteen sub-block scales `d * scale` of a Q6_K super-block, as ggml's dequantization
/// computes them (f32 products).
#[inline(always)]
pub fn q6_k_scales(b: &[u8]) -> [f32; 16] {
    let d = block_scale(&b[208..]);
    std::array::from_fn(|j| d * f32::from(b[192 + j] as i8))
}

/// The 6-bit value (minus 32) of weight `128 * half + 32 * g + l` of a Q6_K super-block.
#[inline(always)]
fn q6_k_value(b: &[u8], half: usize, g: usize, l: usize) -> i8 {
    let ql = b[64 * half + 32 * (g % 2) + l];
    let qh = b[128 + 32 * half + l];
    let low = if g < 2 { ql & 0x0F } else { ql >> 4 };
    (low | (((qh >> (2 * g)) & 3) << 4)) as i8 - 32
}

/// Dequantizes Q6_K super-blocks to `out` (256 values each): in each half of 128, group `g` of
/// 32 takes the low (`g < 2`) or high nibbles of 32 bytes (`g % 2` picks which) and bit pair
/// `g` of the high bits; weight = `(d * scale) * q`, scale `l / 16 + 2 g` of the half's eight.
pub fn dequantize_q6_k(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q6_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let ds = q6_k_scales(b);
        for half in 0..2 {
            for g in 0..4 {
                for l in 0..32 {
                    let q = q6_k_value(b, half, g, l);
                    o[128 * half + 32 * g + l] = ds[8 * half + l / 16 + 2 * g] * f32::from(q);
                }
            }
        }
    }
}

/// Dequantizes Q4_0 blocks to `out` (32 values per block).
pub fn dequantize_q4_0(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(Q4_0_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = block_scale(b);
        for j in 0..BLOCK / 2 {
            o[j] = f32::from((b[2 + j] & 0x0F) as i8 - 8) * d;
            o[j + BLOCK / 2] = f32::from((b[2 + j] >> 4) as i8 - 8) * d;
        }
    }
}
