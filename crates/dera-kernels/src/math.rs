//! Element-wise functions of the decode path that vectorize: `e^x` ([`exp`], [`exp_in_place`]),
//! and what is built from it ([`silu_mul_into`]).
//!
//! `std`'s `f32::exp` is a libm call per value: in a batched decoding step of a small model the
//! softmax of attention and SiLU make tens of thousands of them (about a tenth of the step).
//! [`exp`] is the classic Cephes `expf` (round `x log2 e` to `n`, `r = x - n ln 2` in two parts,
//! a degree-6 polynomial for `e^r`, then `2^n` through the exponent bits), written in plain
//! IEEE operations only (`+ - * /`, comparisons, bit moves). Rust never contracts them into
//! fused multiply-adds, so every lane of every instruction set computes the same bits as the
//! scalar code: the result of a value never depends on its neighbours, the batch, the thread
//! count or the CPU.

/// `e^x` within 2 ulp of the exact value for normal results (`-87.3 <= x <= 88.7`); `+inf`
/// above 88.72, `0` below -87.33 (the exact value would be subnormal, under 1.2e-38), `NaN` for
/// `NaN`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: the first has 9 significant bits, so `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    const HI: f32 = 88.3;
    const LO: f32 = -87.3;
    // Clamped so that `2^n` stays a normal number; the edges are set again at the end.
    let c = x.clamp(LO, HI);
    let n = (c * LOG2E + ROUND) - ROUND;
    let y = exp_reduced((c - n * LN2_HI) - n * LN2_LO);
    // n is an integer in [-126, 128): `n + 2^23 + 127` holds its biased exponent in the low
    // mantissa bits (ulp 1 there), moved into place by a shift (no float-to-int conversion,
    // which would not vectorize).
    let scale = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    let e = y * scale;
    if x > 88.722_83 {
        f32::INFINITY
    } else if x < -87.336_55 {
        0.0
    } else if x > HI {
        // Between the clamp and overflow: e^HI * e^(x - HI), both in range.
        e * exp_reduced(x - HI)
    } else {
        e
    }
}

/// `e^r` for `|r| <= ln 2 / 2` (also the last half unit below overflow): Cephes' degree-6
/// polynomial, `1 + r + r^2 P(r)`.
#[inline(always)]
fn exp_reduced(r: f32) -> f32 {
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    (p * (r * r) + r) + 1.0
}

/// `x[i] = e^x[i]` ([`exp`]) in the widest vectors this CPU has; the same bits on any CPU.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        match crate::simd::Isa::detect() {
            // SAFETY: `detect` found AVX-512 F/BW/VL (and AVX2, FMA) on this CPU.
            crate::simd::Isa::Avx512 => return unsafe { exp_avx512(xs) },
            // SAFETY: `detect` found AVX2 and FMA on this CPU.
            crate::simd::Isa::Avx2 => return unsafe { exp_avx2(xs) },
            crate::simd::Isa::Portable => {}
        }
    }
    exp_loop(xs)
}

#[inline(always)]
fn exp_loop(xs: &mut [f32]) {
    for x in xs {
        *x = exp(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    exp_loop(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_loop(xs)
}

/// `out[i] = silu(gate[i]) * up[i]` with `silu(a) = a / (1 + e^-a)` ([`exp`]), vectorized; the
/// same bits on any CPU. The three slices have the same length.
pub fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for (o, &a) in out.iter_mut().zip(gate) {
        *o = -a;
    }
    exp_in_place(out);
    for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        *o = a / (1.0 + *o) * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        // Every 97th f32 bit pattern in the normal-result range, and the edges.
        let (lo, hi) = (-87.3f32, 88.72f32);
        let mut worst = (0u32, 0f32);
        let mut check = |x: f32| {
            let exact = (x as f64).exp() as f32;
            let u = ulps(exp(x), exact);
            if u > worst.0 {
                worst = (u, x);
            }
        };
        for bits in (0u32..=hi.to_bits()).step_by(97) {
            check(f32::from_bits(bits));
        }
        for bits in (0x8000_0000u32..=lo.to_bits()).step_by(97) {
            check(f32::from_bits(bits));
        }
        for x in [
            0.0, -0.0, 1.0, -1.0, 88.3, 88.31, 88.5, 88.72, -87.3, -87.0, 1e-30, -1e-30,
        ] {
            check(x);
        }
        assert!(worst.0 <= 2, "{} ulp at x = {:e}", worst.0, worst.1);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.72).is_finite());
    }

    #[test]
    fn vectors_give_the_scalar_bits_on_every_instruction_set() {
        let xs: Vec<f32> = (0..1003)
            .map(|i| (i as f32 * 0.377).sin() * 100.0 + if i % 7 == 0 { f32::NAN } else { 0.0 })
            .collect();
        let scalar: Vec<u32> = xs.iter().map(|&x| exp(x).to_bits()).collect();
        let mut v = xs.clone();
        exp_in_place(&mut v);
        assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), scalar);
        #[cfg(target_arch = "x86_64")]
        for isa in crate::simd::Isa::available() {
            let mut v = xs.clone();
            match isa {
                // SAFETY: `available` lists only what this CPU runs.
                crate::simd::Isa::Avx512 => unsafe { exp_avx512(&mut v) },
                // SAFETY: as above.
                crate::simd::Isa::Avx2 => unsafe { exp_avx2(&mut v) },
                crate::simd::Isa::Portable => exp_loop(&mut v),
            }
            let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
            assert_eq!(bits, scalar, "{isa:?}");
        }
    }

    #[test]
    fn silu_matches_its_formula_in_f64() {
        let gate: Vec<f32> = (0..500).map(|i| (i as f32 - 250.0) * 0.37).collect();
        let up: Vec<f32> = (0..500).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = vec![0f32; 500];
        silu_mul_into(&gate, &up, &mut out);
        for ((&o, &a), &b) in out.iter().zip(&gate).zip(&up) {
            let (a, b) = (a as f64, b as f64);
            let exact = a / (1.0 + (-a).exp()) * b;
            assert!(
                (o as f64 - exact).abs() <= 4e-7 * exact.abs() + 1e-36,
                "silu({a}) * {b}: {o} vs {exact}"
            );
        }
    }
}
