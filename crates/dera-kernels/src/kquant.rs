//! Quantizers to llama.cpp's K-quant super-blocks (Q4_K, Q5_K, Q6_K), written from ggml's
//! reference quantizers (`quantize_row_q{4,5,6}_K_ref` in `ggml-quants.c`): the same search for
//! each sub-block's scale (and minimum), the same order of every f32 operation, the same
//! rounding, so a row quantized here has the bytes ggml writes when compiled without fused
//! multiply-adds (checked against ggml's own code by `tests/kquant_golden.rs`).
//!
//! - **Q4_K / Q5_K**: eight sub-blocks of 32 weights, each fitted as `scale * q - min` with
//!   `q` in 0..=15 (0..=31) by a weighted least-squares search over 21 (16) candidate scales;
//!   the sub-block scales and minimums are then stored as 6-bit multiples of the super-block's
//!   f16 `d` and `dmin`, and every weight re-rounded against the stored values.
//! - **Q6_K**: sixteen sub-blocks of 16 weights, each `scale * q` with `q` in -32..=31 (a
//!   19-candidate search for the scale), the scales as signed 8-bit multiples of an f16 `d`.

use half::f16;

use crate::quant::{
    Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K, scale_min_k4, signed_max,
};

/// ggml's `GROUP_MAX_EPS`: a sub-block whose largest magnitude is below it quantizes to zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: rounds `x` (|x| < 2^22) to the nearest integer, ties to even, by the
/// float-addition trick (not `f32::round`, which rounds ties away from zero).
#[inline]
fn nearest_int(x: f32) -> i32 {
    debug_assert!(x.abs() <= 4_194_303.0, "{x}");
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// f32 to f16 bits, rounding to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline]
fn fp16(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// The f16 at the start of `b`, as f32.
#[inline]
fn fp32(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// ggml's `make_qkx2_quants`: fits `x` (weighted by `weights`) as `scale * l - min` with `l` in
/// `0..=nmax`, trying `nstep + 1` scales from `(rmin + nmax) / (max - min)` in steps of
/// `rdelta`, by weighted squared (`use_mad`: absolute) error; writes the levels to `levels` and
/// returns `(scale, min)` (`min` >= 0 is subtracted).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let n = x.len();
    let mut aux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * f32::from(levels[i]) + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The `make_qkx2_quants` settings of a K-quant with sub-block minimums.
struct Fit {
    nmax: i32,
    rmin: f32,
    nstep: i32,
    use_mad: bool,
}

/// Fits each of the `N` sub-blocks of super-block `sb` as `scale * l - min` (weights from
/// `weigh`), as ggml's Q2_K/Q4_K/Q5_K quantizers do: the levels, each sub-block's scale and
/// minimum, and the largest scale and minimum.
fn fit_sub_blocks<const N: usize>(
    sb: &[f32],
    fit: &Fit,
    weigh: impl Fn(&[f32], &mut [f32]),
) -> ([u8; QK_K], [f32; N], [f32; N], f32, f32) {
    let len = QK_K / N;
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; N], [0f32; N]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..N {
        let sub = &sb[len * j..len * (j + 1)];
        weigh(sub, &mut weights[..len]);
        let (scale, min) = make_qkx2_quants(
            fit.nmax,
            sub,
            &weights[..len],
            &mut levels[len * j..len * (j + 1)],
            fit.rmin,
            0.1,
            fit.nstep,
            fit.use_mad,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    (levels, scales, mins, max_scale, max_min)
}

/// Packs 256 2-bit levels four to a byte as ggml's Q2_K/Q3_K do: in each half of 128, byte `l`
/// holds levels `l`, `l + 32`, `l + 64` and `l + 96` from the low bits up.
fn pack_crumbs(level: impl Fn(usize) -> u8, out: &mut [u8]) {
    for half in 0..2 {
        for l in 0..32 {
            let q = |t: usize| level(128 * half + l + 32 * t);
            out[32 * half + l] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
        }
    }
}

/// Q4_K (`nmax` 15) or Q5_K (31) super-block of 256 weights: the f16 `d` and `dmin`, the 12
/// packed 6-bit scales and minimums, and the levels of every weight.
fn k4_super_block(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> ([u8; 16], [u8; QK_K]) {
    let fit = Fit {
        nmax,
        rmin,
        nstep,
        use_mad: false,
    };
    // Weights: the sub-block's RMS plus each value's magnitude.
    let (mut levels, scales, mins, max_scale, max_min) = fit_sub_blocks::<8>(x, &fit, |sub, w| {
        let av_x = (sub.iter().fold(0f32, |s, &v| s + v * v) / 32.0).sqrt();
        for (w, &v) in w.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
    });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut head = [0u8; 16];
    let packed = &mut head[4..];
    for j in 0..8 {
        // ggml stores nearest_int's result in a uint8_t before the MIN.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    head[..2].copy_from_slice(&fp16(max_scale / 63.0));
    head[2..4].copy_from_slice(&fp16(max_min / 63.0));
    let (d, dmin) = (fp32(&head[..2]), fp32(&head[2..4]));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &head[4..]);
        let ds = d * f32::from(sc);
        if ds == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        for i in 32 * j..32 * (j + 1) {
            levels[i] = nearest_int((x[i] + dm) / ds).clamp(0, nmax) as u8;
        }
    }
    (head, levels)
}

/// Quantizes `x` (a multiple of 256 values) to Q4_K super-blocks appended to `out`.
pub fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(QK_K));
    for sb in x.chunks_exact(QK_K) {
        let start = out.len();
        let (head, levels) = k4_super_block(sb, 15, -1.0, 20);
        out.extend_from_slice(&head);
        for c in 0..4 {
            out.extend((0..32).map(|l| levels[64 * c + l] | (levels[64 * c + l + 32] << 4)));
        }
        debug_assert_eq!(out.len() - start, Q4_K_BYTES);
    }
}

/// Quantizes `x` (a multiple of 256 values) to Q5_K super-blocks appended to `out`.
pub fn quantize_q5_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(QK_K));
    for sb in x.chunks_exact(QK_K) {
        let start = out.len();
        let (head, levels) = k4_super_block(sb, 31, -0.5, 15);
        out.extend_from_slice(&head);
        let mut qh = [0u8; 32];
        let mut qs = [0u8; 128];
        for c in 0..4 {
            for j in 0..32 {
                let (mut l1, mut l2) = (levels[64 * c + j], levels[64 * c + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= 1 << (2 * c);
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= 2 << (2 * c);
                }
                qs[32 * c + j] = l1 | (l2 << 4);
            }
        }
        out.extend_from_slice(&qh);
        out.extend_from_slice(&qs);
        debug_assert_eq!(out.len() - start, Q5_K_BYTES);
    }
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights: fits `x` as `scale *
/// l` with `l` in `-nmax..nmax`, trying 19 scales around `-nmax / max` (the value of largest
/// magnitude) and keeping the one with the best weighted (`x^2`) fit; writes `l + nmax` of that
/// fit to `levels` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [u8]) -> f32 {
    let max = signed_max(x);
    if max.abs() < GROUP_MAX_EPS {
        levels[..x.len()].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let keep = |iscale: f32, levels: &mut [u8]| {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (level(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -nmax_f / max;
    keep(iscale, levels);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax_f + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            keep(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Quantizes `x` (a multiple of 256 values) to Q6_K super-blocks appended to `out`.
pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(QK_K));
    for sb in x.chunks_exact(QK_K) {
        let start = out.len();
        let mut scales = [0f32; 16];
        // Sub-blocks whose stored scale comes out zero keep these first levels (as in ggml).
        let mut levels = [0u8; QK_K];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (ib, s) in scales.iter_mut().enumerate() {
            let range = 16 * ib..16 * (ib + 1);
            *s = make_qx_quants(32, &sb[range.clone()], &mut levels[range]);
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        let mut block = [0u8; Q6_K_BYTES];
        if max_abs_scale >= GROUP_MAX_EPS {
            let iscale = -128.0 / max_scale;
            block[208..].copy_from_slice(&fp16(1.0 / iscale));
            for (ib, &s) in scales.iter().enumerate() {
                block[192 + ib] = nearest_int(iscale * s).min(127) as i8 as u8;
            }
            let d = fp32(&block[208..]);
            for j in 0..16 {
                let ds = d * f32::from(block[192 + j] as i8);
                if ds == 0.0 {
                    continue;
                }
                for i in 16 * j..16 * (j + 1) {
                    levels[i] = (nearest_int(sb[i] / ds).clamp(-32, 31) + 32) as u8;
                }
            }
            for half in 0..2 {
                let (l, ql, qh) = (128 * half, 64 * half, 128 + 32 * half);
                for i in 0..32 {
                    let q = |g: usize| levels[l + i + 32 * g];
                    block[ql + i] = (q(0) & 0x0F) | ((q(2) & 0x0F) << 4);
                    block[ql + 32 + i] = (q(1) & 0x0F) | ((q(3) & 0x0F) << 4);
                    block[qh + i] =
                        (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
                }
            }
        }
        out.extend_from_slice(&block);
        debug_assert_eq!(out.len() - start, Q6_K_BYTES);
    }
}

/// ggml's `make_q3_quants` with `do_rmse`: levels `l` in `-nmax..nmax` for `scale * l ~ x`,
/// started from `-nmax / max` and then moved one weight at a time (up to five sweeps) while the
/// weighted (`x^2`) least-squares fit improves; writes `l + nmax` to `levels`, returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let max = signed_max(x);
    if max.abs() < GROUP_MAX_EPS {
        levels[..x.len()].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *o = l as i8;
        let (w, l) = (v * v, l as f32);
        sumlx += w * v * l;
        suml2 += w * l * l;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (o, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let old = f32::from(*o);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != i32::from(*o) {
                    let n = new as f32;
                    slx += w * v * n;
                    sl2 += w * n * n;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for o in levels.iter_mut().take(x.len()) {
        *o += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Quantizes `x` (a multiple of 256 values) to Q3_K super-blocks appended to `out`
/// (`quantize_row_q3_K_ref`): sixteen sub-blocks of 16 weights fitted by `make_q3_quants` with
/// levels -4..=3, their scales as 6-bit multiples of an f16 `d`, every weight re-rounded against
/// the stored scale; low two bits packed four to a byte, the third in the high-bit bytes.
pub fn quantize_q3_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(QK_K));
    for sb in x.chunks_exact(QK_K) {
        let start = out.len();
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for (j, s) in scales.iter_mut().enumerate() {
            *s = make_q3_quants(
                4,
                &sb[16 * j..16 * (j + 1)],
                &mut levels[16 * j..16 * (j + 1)],
            );
            if s.abs() > amax {
                amax = s.abs();
                max_scale = *s;
            }
        }
        let mut block = [0u8; Q3_K_BYTES];
        let packed = &mut block[96..108];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // ggml stores nearest_int's result in an int8_t before the clamp.
                let l = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    packed[j] = l & 0x0F;
                } else {
                    packed[j - 8] |= (l & 0x0F) << 4;
                }
                packed[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            block[108..].copy_from_slice(&fp16(1.0 / iscale));
        } else {
            block[108..].copy_from_slice(&fp16(0.0));
        }
        let d = fp32(&block[108..]);
        let sc = crate::quant::q3_k_scale_values(&block[96..108]);
        for (j, &scale) in sc.iter().enumerate() {
            let ds = d * f32::from(scale);
            if ds == 0.0 {
                continue;
            }
            for i in 16 * j..16 * (j + 1) {
                levels[i] = (nearest_int(sb[i] / ds).clamp(-4, 3) + 4) as i8;
            }
        }
        // The third bit of weight `j` is bit `j / 32` of high-bit byte `j % 32`.
        for (j, l) in levels.iter_mut().enumerate() {
            if *l > 3 {
                block[j % 32] |= 1 << (j / 32);
                *l -= 4;
            }
        }
        pack_crumbs(|i| levels[i] as u8, &mut block[32..96]);
        out.extend_from_slice(&block);
        debug_assert_eq!(out.len() - start, Q3_K_BYTES);
    }
}

/// Quantizes `x` (a multiple of 256 values) to Q2_K super-blocks appended to `out`
/// (`quantize_row_q2_K_ref`): sixteen sub-blocks of 16 weights fitted as `scale * l - min`, `l`
/// in 0..=3, by weighted (`|x|`) absolute error; scales and minimums as 4-bit multiples of f16
/// `d` and `dmin`, every weight re-rounded against the stored values; four levels to a byte.
pub fn quantize_q2_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(QK_K));
    const Q4SCALE: f32 = 15.0;
    for sb in x.chunks_exact(QK_K) {
        let start = out.len();
        let fit = Fit {
            nmax: 3,
            rmin: -0.5,
            nstep: 15,
            use_mad: true,
        };
        let (mut levels, scales, mins, max_scale, max_min) =
            fit_sub_blocks::<16>(sb, &fit, |sub, w| {
                for (w, &v) in w.iter_mut().zip(sub) {
                    *w = v.abs();
                }
            });
        let mut block = [0u8; Q2_K_BYTES];
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (o, &s) in block.iter_mut().zip(&scales) {
                *o = nearest_int(iscale * s) as u8;
            }
            block[80..82].copy_from_slice(&fp16(max_scale / Q4SCALE));
        } else {
            block[80..82].copy_from_slice(&fp16(0.0));
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (o, &m) in block.iter_mut().zip(&mins) {
                *o |= (nearest_int(iscale * m) as u8) << 4;
            }
            block[82..84].copy_from_slice(&fp16(max_min / Q4SCALE));
        } else {
            block[82..84].copy_from_slice(&fp16(0.0));
        }
        let (d, dmin) = (fp32(&block[80..82]), fp32(&block[82..84]));
        for (j, &sc) in block[..16].iter().enumerate() {
            let ds = d * f32::from(sc & 0x0F);
            if ds == 0.0 {
                continue;
            }
            let dm = dmin * f32::from(sc >> 4);
            for i in 16 * j..16 * (j + 1) {
                levels[i] = nearest_int((sb[i] + dm) / ds).clamp(0, 3) as u8;
            }
        }
        pack_crumbs(|i| levels[i], &mut block[16..80]);
        out.extend_from_slice(&block);
        debug_assert_eq!(out.len() - start, Q2_K_BYTES);
    }
}
