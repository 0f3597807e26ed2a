//! Dequantization to `f32`, following ggml's reference `dequantize_row_*` (ggml-quants.c)
//! operation for operation, so the values equal what llama.cpp and the `gguf` Python package
//! compute.

use half::{bf16, f16};

use crate::GgmlType;

/// Why a buffer cannot be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type is not one dera reads.
    #[error(
        "tensor type {0} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS are)"
    )]
    Unsupported(GgmlType),
    /// The byte count does not hold `n` weights of the type.
    #[error("{bytes} bytes do not hold {n} weights of type {ty}")]
    Size {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Weights asked for.
        n: usize,
    },
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, whose length is the number of weights.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let (per, size) = ty.block().ok_or(DequantError::Unsupported(ty))?;
    if ty.bytes_for(out.len()) != Some(bytes.len()) {
        return Err(DequantError::Size {
            ty,
            bytes: bytes.len(),
            n: out.len(),
        });
    }
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(per));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::Bf16 => {
            blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q2K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Iq4Nl => blocks.for_each(|(b, y)| iq4_nl(b, y)),
        GgmlType::Iq4Xs => blocks.for_each(|(b, y)| iq4_xs(b, y)),
        GgmlType::Q3K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
        GgmlType::Other(_) => return Err(DequantError::Unsupported(ty)),
    }
    Ok(())
}

/// `block_q8_0`: `d` (f16), `qs[32]` (i8); `y = qs * d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_q4_0`: `d`, `qs[16]`; low nibbles are weights 0..16, high nibbles 16..32, minus 8.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = f32::from((q & 0x0F) as i8 - 8) * d;
        y[j + 16] = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// `block_q4_1`: `d`, `m`, `qs[16]`; `y = q * d + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = f32::from(q & 0x0F) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit value of weights `j` and `j + 16` of a Q5_0/Q5_1 block from its nibble byte `q`
/// and its `qh` word (bit `j` is weight `j`'s fifth bit), as ggml's `dequantize_row_q5_*`.
fn five_bits(q: u8, qh: u32, j: usize) -> (u8, u8) {
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    ((q & 0x0F) | xh_0, (q >> 4) | xh_1)
}

/// `block_q5_0`: `d`, `qh[4]`, `qs[16]`; `y = (q - 16) * d`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let (x0, x1) = five_bits(q, qh, j);
        y[j] = f32::from(x0 as i8 - 16) * d;
        y[j + 16] = f32::from(x1 as i8 - 16) * d;
    }
}

/// `block_q5_1`: `d`, `m`, `qh[4]`, `qs[16]`; `y = q * d + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let (x0, x1) = five_bits(q, qh, j);
        y[j] = f32::from(x0) * d + m;
        y[j + 16] = f32::from(x1) * d + m;
    }
}

/// ggml's `kvalues_iq4nl`: the values IQ4 indices stand for.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `block_iq4_nl`: `d`, `qs[16]`; `y = d * kvalues[q]`, low nibbles are weights 0..16.
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

/// `block_iq4_xs`: `d`, `scales_h` (u16), `scales_l[4]`, `qs[128]`; sub-block `ib` of 32 has
/// scale `d * (ls - 32)`, `ls` four bits of `scales_l` and two of `scales_h`.
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let high = u16::from_le_bytes([b[2], b[3]]);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let ls = i32::from((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F)
            | (i32::from((high >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        for (j, &q) in b[8 + 16 * ib..24 + 16 * ib].iter().enumerate() {
            y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
            y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

/// `block_q2_K`: `scales[16]` (low nibble scale, high nibble minimum), `qs[64]`, `d`, `dmin`; per
/// 128-weight half and bit pair `j`, two groups of 16: `d * (sc & 15) * q - dmin * (sc >> 4)`.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 80), f16_at(b, 82));
    let mut q = &b[16..80];
    let (mut is, mut at) = (0, 0);
    for _ in 0..2 {
        for j in 0..4 {
            for part in 0..2 {
                let sc = b[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0x0F), min * f32::from(sc >> 4));
                for l in 0..16 {
                    y[at] = dl * f32::from((q[l + 16 * part] >> (2 * j)) & 3) - ml;
                    at += 1;
                }
            }
        }
        q = &q[32..];
    }
}

/// `block_q3_K`: `hmask[32]`, `qs[64]`, `scales[12]`, `d`; as ggml's `dequantize_row_q3_K`: the
/// scales unpacked through four `u32` words (`kmask1 = 0x03030303`, `kmask2 = 0x0f0f0f0f`), then
/// per 128-weight half and bit pair `j`, two groups of 16: `d * (scale - 32) * (q - (high ? 0 : 4))`.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 108);
    let word =
        |i: usize| u32::from_le_bytes([b[96 + 4 * i], b[97 + 4 * i], b[98 + 4 * i], b[99 + 4 * i]]);
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & k2) | ((tmp & k1) << 4),
        (a1 & k2) | (((tmp >> 2) & k1) << 4),
        ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
        ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
    ];
    let scale = |is: usize| i32::from(aux[is / 4].to_le_bytes()[is % 4] as i8) - 32;
    let (hm, mut q) = (&b[0..32], &b[32..96]);
    let (mut is, mut m, mut at) = (0, 1u8, 0);
    for _ in 0..2 {
        for j in 0..4 {
            for part in 0..2 {
                let dl = d * scale(is) as f32;
                is += 1;
                for l in 0..16 {
                    let v = i32::from((q[l + 16 * part] >> (2 * j)) & 3)
                        - if hm[l + 16 * part] & m != 0 { 0 } else { 4 };
                    y[at] = dl * v as f32;
                    at += 1;
                }
            }
            m <<= 1;
        }
        q = &q[32..];
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` (0..8).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: `d`, `dmin`, `scales[12]`, `qs[128]`; eight sub-blocks of 32.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = scale_min_k4(2 * chunk, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(2 * chunk + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        for l in 0..32 {
            y[l] = d1 * f32::from(q[l] & 0x0F) - m1;
            y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// `block_q5_K`: `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, (ql, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (sc, m) = scale_min_k4(2 * chunk, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(2 * chunk + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * f32::from((ql[l] & 0x0F) + hi1) - m1;
            y[l + 32] = d2 * f32::from((ql[l] >> 4) + hi2) - m2;
        }
    }
}

/// `block_q6_K`: `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`; two halves of 128 weights.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_scales_signed_bytes() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 4;
        b[3] = (-6i8) as u8;
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut y).unwrap();
        assert_eq!(&y[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = vec![0x88u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2] = 0xF1; // weight 0: 1 - 8, weight 16: 15 - 8
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1]), (-14.0, 14.0, 0.0));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut y = vec![0f32; 33];
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], &mut y).is_err());
        let mut y = vec![0f32; 32];
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], &mut y).is_err());
        assert!(dequantize(GgmlType::Other(99), &[0; 34], &mut y).is_err());
    }
}
