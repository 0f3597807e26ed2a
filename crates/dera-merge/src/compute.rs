//! The per-tensor weighted sum and its single rounding, shared by the streamed and in-memory
//! merges.
//!
//! For every element, `acc = c_0 * x_0`, then `acc = acc + c_i * x_i` in input order (separate
//! multiply and add, no fused multiply-add), in `f32` or `f64`; then one round-to-nearest-even
//! to the output dtype. Terms whose coefficient is zero in the accumulation precision are
//! skipped, so with one coefficient equal to 1 and the others 0 the result is that input, bit
//! for bit (signalling NaNs aside, which IEEE arithmetic quiets). The work is elementwise, so
//! splitting it across threads or chunks never changes a bit.

use std::ops::{Add, Mul};

use dera_checkpoint::{Dtype, TensorMap, bytes_to_f32};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{MergeError, Result};
use crate::lowrank::Addends;
use crate::spec::{Accumulate, MergeInputs, MergeOptions};
use crate::validate::validate;
use dera_lora::Adapter;

/// Merges `inputs` in memory: the same values as [`crate::merge_checkpoints`] writes (rounded
/// to the output dtype), held as `f32`.
///
/// Non-float tensors (copied verbatim by the streamed merge) are left out, since a
/// [`TensorMap`] holds `f32`; a `F64` output is narrowed to `f32` as any loader would.
pub fn merge_in_memory(inputs: &MergeInputs, options: &MergeOptions) -> Result<TensorMap> {
    merge_in_memory_with(inputs, &[], options)
}

/// [`merge_in_memory`] plus LoRA adapters: `adapters` are `(adapter, lambda)` pairs adding
/// `lambda * scale * B A` to the weights they adapt ([`crate::merge_checkpoints_with`]).
pub fn merge_in_memory_with(
    inputs: &MergeInputs,
    adapters: &[(&Adapter, f64)],
    options: &MergeOptions,
) -> Result<TensorMap> {
    let v = validate(inputs, adapters, None, options)?;
    let addends = Addends::new(adapters, &v)?;
    let read: Vec<usize> = (0..v.coefficients.len())
        .filter(|&i| v.coefficients[i] != 0.0)
        .collect();
    let coeffs: Vec<f64> = read.iter().map(|&i| v.coefficients[i]).collect();
    let mut map = TensorMap::new(format!("<merge of {}>", inputs.reference.display()));
    for t in v.tensors.iter().filter(|t| t.merged) {
        let views = read
            .iter()
            .map(|&i| {
                let raw = v.checkpoints[i].raw(&t.name)?;
                Ok(&raw.bytes[..t.in_bytes() as usize])
            })
            .collect::<Result<Vec<&[u8]>>>()?;
        let mut out = vec![0u8; t.out_bytes() as usize];
        let add = addends.chunk(&t.name, 0, t.elements());
        combine(
            &views,
            &coeffs,
            t.dtype,
            t.out_dtype,
            options.accumulate,
            add.as_deref(),
            &mut out,
        )
        .map_err(|i| non_finite_output_at(&t.name, i, 0, t.out_dtype, &out, &v.coefficients))?;
        let values = bytes_to_f32(t.out_dtype, &out).unwrap_or_default();
        map.insert(t.name.clone(), values, t.shape.clone());
    }
    Ok(map)
}

/// The error for element `index` of `out`, a chunk of tensor `name`'s output bytes that
/// starts at element `offset`.
pub(crate) fn non_finite_output_at(
    name: &str,
    index: usize,
    offset: usize,
    dtype: Dtype,
    out: &[u8],
    coefficients: &[f64],
) -> MergeError {
    let size = dtype.bitsize() / 8;
    let value = bytes_to_f32(dtype, &out[index * size..(index + 1) * size])
        .and_then(|v| v.first().copied())
        .map_or_else(|| "not finite".into(), |v| v.to_string());
    MergeError::NonFiniteOutput {
        name: name.to_string(),
        index: offset + index,
        value,
        dtype: dera_checkpoint::dtype_name(dtype),
        coefficients: coefficients.to_vec(),
    }
}

/// Elements handled per stack block.
const BLOCK: usize = 1024;
/// Elements per parallel task; smaller slices run on the calling thread.
const PAR_CHUNK: usize = 1 << 16;

/// Bytes per element of the floating-point dtypes this crate combines.
pub(crate) fn float_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F64 => Some(8),
        Dtype::F32 => Some(4),
        Dtype::BF16 | Dtype::F16 => Some(2),
        _ => None,
    }
}

/// Whether tensors of `in_dtype` are summed in `f64` under `accumulate`.
pub(crate) fn sums_in_f64(in_dtype: Dtype, accumulate: Accumulate) -> bool {
    accumulate == Accumulate::F64 || in_dtype == Dtype::F64
}

/// Writes `sum_i coeffs[i] * inputs[i] (+ addend)` into `out`, rounded once to `out_dtype`.
///
/// `addend` (`f32`, one value per element) is added to the sum in the accumulation precision
/// before the rounding: the low-rank updates of LoRA adapters.
///
/// `inputs` are little-endian `in_dtype` bytes of equal length; `out` holds as many
/// `out_dtype` elements. Both dtypes must be floating point ([`float_size`]).
///
/// A merge never writes a non-finite value it did not read: `Err(i)` names an element that
/// came out infinite or NaN although every input contributing to it is finite (the sum
/// overflowed the accumulation or output dtype).
pub(crate) fn combine(
    inputs: &[&[u8]],
    coeffs: &[f64],
    in_dtype: Dtype,
    out_dtype: Dtype,
    accumulate: Accumulate,
    addend: Option<&[f32]>,
    out: &mut [u8],
) -> Result<(), usize> {
    let (Some(isz), Some(osz)) = (float_size(in_dtype), float_size(out_dtype)) else {
        unreachable!("combine called with a non-float dtype");
    };
    let n = out.len() / osz;
    debug_assert!(inputs.iter().all(|x| x.len() == n * isz));
    let wide = sums_in_f64(in_dtype, accumulate);
    let terms: Vec<(&[u8], f64)> = inputs
        .iter()
        .zip(coeffs)
        .filter(|&(_, &c)| if wide { c != 0.0 } else { c as f32 != 0.0 })
        .map(|(x, &c)| (*x, c))
        .collect();
    let run = |start: usize, out: &mut [u8]| {
        let len = out.len() / osz;
        let part: Vec<(&[u8], f64)> = terms
            .iter()
            .map(|&(x, c)| (&x[start * isz..(start + len) * isz], c))
            .collect();
        let add = addend.map(|a| &a[start..start + len]);
        if wide {
            serial::<f64>(&part, add, in_dtype, out_dtype, out);
        } else {
            serial::<f32>(&part, add, in_dtype, out_dtype, out);
        }
        match new_nonfinite(&part, in_dtype, out_dtype, out) {
            Some(i) => Err(start + i),
            None => Ok(()),
        }
    };
    if n <= PAR_CHUNK {
        run(0, out)
    } else {
        out.par_chunks_mut(PAR_CHUNK * osz)
            .enumerate()
            .try_for_each(|(i, o)| run(i * PAR_CHUNK, o))
    }
}

/// Whether element `i` of little-endian `dtype` bytes is finite (exponent not all ones).
pub(crate) fn finite_at(dtype: Dtype, bytes: &[u8], i: usize) -> bool {
    let u16_at = |i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    match dtype {
        Dtype::BF16 => u16_at(i) & 0x7F80 != 0x7F80,
        Dtype::F16 => u16_at(i) & 0x7C00 != 0x7C00,
        Dtype::F32 => {
            let b = u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]);
            b & 0x7F80_0000 != 0x7F80_0000
        }
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_le_bytes(b) & 0x7FF0_0000_0000_0000 != 0x7FF0_0000_0000_0000
        }
    }
}

/// The first output element that is not finite while all its contributing inputs are.
fn new_nonfinite(
    terms: &[(&[u8], f64)],
    in_dtype: Dtype,
    out_dtype: Dtype,
    out: &[u8],
) -> Option<usize> {
    let n = out.len() / (out_dtype.bitsize() / 8);
    (0..n).find(|&i| {
        !finite_at(out_dtype, out, i) && terms.iter().all(|&(x, _)| finite_at(in_dtype, x, i))
    })
}

fn serial<L: Lane>(
    terms: &[(&[u8], f64)],
    addend: Option<&[f32]>,
    in_dtype: Dtype,
    out_dtype: Dtype,
    out: &mut [u8],
) {
    let (isz, osz) = (in_dtype.bitsize() / 8, out_dtype.bitsize() / 8);
    let n = out.len() / osz;
    let coeffs: Vec<L> = terms.iter().map(|&(_, c)| L::coeff(c)).collect();
    let mut acc = [L::default(); BLOCK];
    let mut tmp = [L::default(); BLOCK];
    let mut start = 0;
    while start < n {
        let m = BLOCK.min(n - start);
        let (acc, tmp) = (&mut acc[..m], &mut tmp[..m]);
        let range = |size: usize| start * size..(start + m) * size;
        match terms.split_first() {
            None => acc.fill(L::default()),
            Some(((first, _), rest)) => {
                L::decode(in_dtype, &first[range(isz)], acc);
                let c0 = coeffs[0];
                acc.iter_mut().for_each(|a| *a = c0 * *a);
                for ((x, _), &c) in rest.iter().zip(&coeffs[1..]) {
                    L::decode(in_dtype, &x[range(isz)], tmp);
                    acc.iter_mut()
                        .zip(tmp.iter())
                        .for_each(|(a, &t)| *a = *a + c * t);
                }
            }
        }
        if let Some(add) = addend {
            acc.iter_mut()
                .zip(&add[start..start + m])
                .for_each(|(a, &d)| *a = *a + L::coeff(f64::from(d)));
        }
        L::encode(out_dtype, acc, &mut out[range(osz)]);
        start += m;
    }
}

/// An accumulation precision.
trait Lane: Copy + Default + Add<Output = Self> + Mul<Output = Self> {
    fn coeff(c: f64) -> Self;
    fn decode(dtype: Dtype, bytes: &[u8], out: &mut [Self]);
    fn encode(dtype: Dtype, acc: &[Self], out: &mut [u8]);
}

fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn f64s(bytes: &[u8]) -> impl Iterator<Item = f64> + '_ {
    bytes.chunks_exact(8).map(|c| {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        f64::from_le_bytes(b)
    })
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

fn put<const N: usize, T>(
    out: &mut [u8],
    values: impl Iterator<Item = T>,
    f: impl Fn(T) -> [u8; N],
) {
    out.chunks_exact_mut(N)
        .zip(values)
        .for_each(|(o, v)| o.copy_from_slice(&f(v)));
}

impl Lane for f32 {
    fn coeff(c: f64) -> Self {
        c as f32
    }
    fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
        match dtype {
            Dtype::BF16 => out
                .iter_mut()
                .zip(u16s(bytes))
                .for_each(|(o, b)| *o = bf16_to_f32(b)),
            Dtype::F16 => out
                .iter_mut()
                .zip(u16s(bytes))
                .for_each(|(o, b)| *o = f16::from_bits(b).to_f32()),
            Dtype::F32 => out.iter_mut().zip(f32s(bytes)).for_each(|(o, v)| *o = v),
            _ => out
                .iter_mut()
                .zip(f64s(bytes))
                .for_each(|(o, v)| *o = v as f32),
        }
    }
    fn encode(dtype: Dtype, acc: &[f32], out: &mut [u8]) {
        let it = acc.iter().copied();
        match dtype {
            Dtype::BF16 => put(out, it, |v| bf16::from_f32(v).to_bits().to_le_bytes()),
            Dtype::F16 => put(out, it, |v| f16::from_f32(v).to_bits().to_le_bytes()),
            Dtype::F32 => put(out, it, f32::to_le_bytes),
            _ => put(out, it, |v| f64::from(v).to_le_bytes()),
        }
    }
}

impl Lane for f64 {
    fn coeff(c: f64) -> Self {
        c
    }
    fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
        match dtype {
            Dtype::BF16 => out
                .iter_mut()
                .zip(u16s(bytes))
                .for_each(|(o, b)| *o = f64::from(bf16_to_f32(b))),
            Dtype::F16 => out
                .iter_mut()
                .zip(u16s(bytes))
                .for_each(|(o, b)| *o = f16::from_bits(b).to_f64()),
            Dtype::F32 => out
                .iter_mut()
                .zip(f32s(bytes))
                .for_each(|(o, v)| *o = f64::from(v)),
            _ => out.iter_mut().zip(f64s(bytes)).for_each(|(o, v)| *o = v),
        }
    }
    fn encode(dtype: Dtype, acc: &[f64], out: &mut [u8]) {
        let it = acc.iter().copied();
        match dtype {
            Dtype::BF16 => put(out, it, |v| f64_to_bf16(v).to_bits().to_le_bytes()),
            Dtype::F16 => put(out, it, |v| f64_to_f16(v).to_bits().to_le_bytes()),
            Dtype::F32 => put(out, it, |v| (v as f32).to_le_bytes()),
            _ => put(out, it, f64::to_le_bytes),
        }
    }
}

/// `x` rounded to `f32` with round-to-odd: truncate, then set the last bit if inexact.
///
/// Rounding that result to nearest even at 2 or more fewer bits equals rounding `x` directly,
/// which is how [`f64_to_bf16`] and [`f64_to_f16`] round exactly once.
fn f64_to_f32_odd(x: f64) -> f32 {
    let t = x as f32;
    if !x.is_finite() || f64::from(t) == x {
        return t;
    }
    let mut bits = t.to_bits();
    if f64::from(t).abs() > x.abs() {
        bits -= 1; // one step toward zero (|t| > 0 here, and infinity steps to f32::MAX)
    }
    f32::from_bits(bits | 1)
}

/// Round-to-nearest-even `f64 -> bf16`.
///
/// `half::bf16::from_f64` drops the low 32 bits of the mantissa before rounding, so it rounds a
/// value just above a tie down; this helper rounds exactly once.
pub(crate) fn f64_to_bf16(x: f64) -> bf16 {
    bf16::from_f32(f64_to_f32_odd(x))
}

/// Round-to-nearest-even `f64 -> f16` (see [`f64_to_bf16`]).
pub(crate) fn f64_to_f16(x: f64) -> f16 {
    f16::from_f32(f64_to_f32_odd(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_bf16(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect()
    }

    /// Exact round-to-nearest-even to bf16 by comparing against both neighbours.
    fn reference_bf16(x: f64) -> bf16 {
        let t = bf16::from_f32(x as f32); // a neighbour (or the value itself)
        let cands = [
            t,
            bf16::from_bits(t.to_bits().wrapping_add(1)),
            bf16::from_bits(t.to_bits().wrapping_sub(1)),
        ];
        let mut best = t;
        for c in cands {
            let (dc, db) = ((c.to_f64() - x).abs(), (best.to_f64() - x).abs());
            if dc < db || (dc == db && c.to_bits() & 1 == 0) {
                best = c;
            }
        }
        best
    }

    #[test]
    fn half_from_f64_is_not_exact_but_ours_is() {
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40); // just above the tie between 1 and 1+2^-7
        assert_eq!(
            bf16::from_f64(x),
            bf16::ONE,
            "half truncates the sticky bits"
        );
        assert_eq!(f64_to_bf16(x).to_f64(), 1.0 + 2f64.powi(-7));
        let y = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(f64_to_f16(y).to_f64(), 1.0 + 2f64.powi(-10));
        // Exact ties still go to even.
        assert_eq!(f64_to_bf16(1.0 + 2f64.powi(-8)), bf16::ONE);
    }

    #[test]
    fn f64_rounding_matches_reference() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = match i % 4 {
                0 => f64::from_bits(s),
                // Near bf16 ties: a bf16 value plus half an ulp plus a tiny offset.
                1 => {
                    let b = bf16::from_bits(((s >> 48) as u16 & 0x7FFF).clamp(0x0080, 0x7F7E));
                    let b = b.to_f64();
                    let half_ulp = f64::from_bits(((b.to_bits() >> 52) - 8) << 52);
                    let nudge = ((s & 0xFF) as f64 - 128.0) * 2f64.powi(-40);
                    b + half_ulp * (1.0 + nudge)
                }
                2 => (s as i64 as f64) * 2f64.powi(-140), // subnormal range
                _ => f64::from_bits(s) * 1e-300,
            };
            if !x.is_finite() || x.abs() > 3.3e38 {
                continue;
            }
            assert_eq!(
                f64_to_bf16(x).to_bits(),
                reference_bf16(x).to_bits(),
                "{x:e}"
            );
        }
        assert!(f64_to_bf16(1e300).is_infinite());
        assert!(f64_to_bf16(f64::NAN).is_nan());
        assert_eq!(f64_to_bf16(-1e-300).to_bits(), 0x8000);
        assert!(f64_to_f16(70000.0).is_infinite());
    }

    #[test]
    fn unit_coefficient_is_identity_for_special_values() {
        let v = [
            0.0,
            -0.0,
            1.0,
            -3.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            f32::NAN,
            65504.0,
            1.0e-45,
        ];
        let x = bytes_bf16(&v);
        let y = bytes_bf16(&[7.0; 10]);
        for acc in [Accumulate::F32, Accumulate::F64] {
            for (coeffs, want) in [([1.0, 0.0], &x), ([0.0, 1.0], &y)] {
                let mut out = vec![0u8; x.len()];
                combine(
                    &[&x, &y],
                    &coeffs,
                    Dtype::BF16,
                    Dtype::BF16,
                    acc,
                    None,
                    &mut out,
                )
                .unwrap();
                assert_eq!(&out, want);
            }
        }
    }

    #[test]
    fn chunking_and_threads_do_not_change_bits() {
        let n = PAR_CHUNK * 3 + 17;
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let (a, b) = (bytes_bf16(&a), bytes_bf16(&b));
        let mut whole = vec![0u8; n * 4];
        combine(
            &[&a, &b],
            &[0.3, 0.7],
            Dtype::BF16,
            Dtype::F32,
            Accumulate::F32,
            None,
            &mut whole,
        )
        .unwrap();
        let mut pieces = vec![0u8; n * 4];
        for (k, o) in pieces.chunks_mut(1000 * 4).enumerate() {
            let r = k * 2000..k * 2000 + o.len() / 2;
            combine(
                &[&a[r.clone()], &b[r]],
                &[0.3, 0.7],
                Dtype::BF16,
                Dtype::F32,
                Accumulate::F32,
                None,
                o,
            )
            .unwrap();
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn overflow_is_refused_but_read_infinities_pass_through() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (x, y) = (f32s(&[1.0, 3e38]), f32s(&[1.0, 3e38]));
        let mut out = vec![0u8; 8];
        // lambda = 2: -1 * 3e38 + 2 * 3e38 = 3e38 in f64, but 2 * 3e38 overflows f32 first.
        let e = combine(
            &[&x, &y],
            &[-1.0, 2.0],
            Dtype::F32,
            Dtype::F32,
            Accumulate::F32,
            None,
            &mut out,
        );
        assert_eq!(e, Err(1));
        combine(
            &[&x, &y],
            &[-1.0, 2.0],
            Dtype::F32,
            Dtype::F32,
            Accumulate::F64,
            None,
            &mut out,
        )
        .unwrap();
        // A value that does not fit the output dtype.
        let big = f32s(&[1.0, 70000.0]);
        let mut half = vec![0u8; 4];
        let e = combine(
            &[&big],
            &[1.0],
            Dtype::F32,
            Dtype::F16,
            Accumulate::F32,
            None,
            &mut half,
        );
        assert_eq!(e, Err(1));
        // An infinity or NaN that was read is written as read.
        let inf = f32s(&[f32::INFINITY, f32::NAN]);
        combine(
            &[&inf, &x],
            &[0.5, 0.5],
            Dtype::F32,
            Dtype::F32,
            Accumulate::F32,
            None,
            &mut out,
        )
        .unwrap();
        // Large chunks run in parallel and still report the element.
        let n = 3 * PAR_CHUNK;
        let mut v = vec![1.0f32; n];
        v[2 * PAR_CHUNK + 5] = 3e38;
        let w = f32s(&v);
        let mut out = vec![0u8; 4 * n];
        let e = combine(
            &[&w],
            &[2.0],
            Dtype::F32,
            Dtype::F32,
            Accumulate::F32,
            None,
            &mut out,
        );
        assert_eq!(e, Err(2 * PAR_CHUNK + 5));
    }
}
