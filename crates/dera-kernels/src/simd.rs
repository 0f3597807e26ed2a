//! Dot-product tiles per instruction set, chosen at run time.
//!
//! A tile computes `out[r][c] = dot(W row r, x row c)` for `R` weight rows and `C` activation
//! rows, loading each weight vector once for all `C` activations. Every output has its own
//! accumulator, fed in the same order whatever the tile shape, so an output's bits do not depend
//! on how the rows were grouped or split over threads.
//!
//! The drivers use one weight row at a time (`R = 1`) and up to four activation rows: one
//! sequential stream per thread is what the hardware prefetchers follow best. Four interleaved
//! weight rows ran at 46-57% of the read bandwidth at one thread (f32), one row at 92-109%
//! (`examples/kernel_bandwidth.rs`).

use std::sync::OnceLock;

use crate::WeightFormat;
use crate::quant::{
    BLOCK, IQ4_NL_BYTES, IQ4_XS_BYTES, Q2_K_BYTES, Q3_K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES,
    Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, QK_K,
};

/// Activations of a product: `f` `[m, k]` as given, and for the integer block products of Q8_0 /
/// Q4_0 weights (AVX-512, AVX2; Q4_1 is widened to `f32` instead) the same values rounded to
/// 16-bit integers per 32-value block: `x ~ s[b] * q[i]` with `s[b] = max|x in block b| /
/// 32767`, so each value is within `s[b] / 2` (a relative 2^-16 of its block's largest value)
/// of the f32 input.
pub(crate) struct Acts<'a> {
    pub(crate) f: &'a [f32],
    pub(crate) q: Vec<i16>,
    pub(crate) s: Vec<f32>,
}

impl<'a> Acts<'a> {
    /// `x` alone (dense weights, or the portable loop).
    pub(crate) fn dense(f: &'a [f32]) -> Self {
        Acts {
            f,
            q: Vec::new(),
            s: Vec::new(),
        }
    }

    /// `x` and its 16-bit blocks (`k` a multiple of [`BLOCK`]). A block holding a non-finite
    /// value gets a NaN scale, so the non-finite input still makes a non-finite output.
    pub(crate) fn blocks16(f: &'a [f32]) -> Self {
        let mut q = vec![0i16; f.len()];
        let mut s = Vec::with_capacity(f.len() / BLOCK);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            unsafe { blocks16_avx2(f, &mut q, &mut s) };
            return Acts { f, q, s };
        }
        blocks16_into(f, &mut q, &mut s);
        Acts { f, q, s }
    }
}

/// The activations as plain slices, for the kernels: given to them as separate arguments, the
/// compiler knows that the results stored through [`Out`] never alias them (a single row at
/// `k = 128` ran about 8% faster than with one `&Acts`).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    f: &'a [f32],
    q: &'a [i16],
    s: &'a [f32],
}

/// [`blocks16_into`] compiled for AVX2 (same operations, same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blocks16_avx2(f: &[f32], q: &mut [i16], s: &mut Vec<f32>) {
    blocks16_into(f, q, s)
}

/// The 16-bit blocks of `f` into `q` and their scales onto `s`.
#[inline(always)]
fn blocks16_into(f: &[f32], q: &mut [i16], s: &mut Vec<f32>) {
    for (xb, qb) in f.chunks(BLOCK).zip(q.chunks_mut(BLOCK)) {
        // The largest magnitude as bits: for non-negative floats the integer order is the
        // float order, and any exponent of all ones (inf, NaN) is above every finite value.
        let top = xb
            .iter()
            .fold(0u32, |a, v| a.max(v.to_bits() & 0x7fff_ffff));
        if top >= 0x7f80_0000 {
            s.push(f32::NAN);
            continue;
        }
        let max = f32::from_bits(top);
        if max == 0.0 {
            s.push(0.0);
            continue;
        }
        let inv = 32767.0 / max;
        for (o, &v) in qb.iter_mut().zip(xb) {
            // Round half away from zero (as `f32::round`, without the libm call): the cast
            // truncates; |v * inv| <= 32767 (and the cast saturates).
            let y = v * inv;
            *o = (y + 0.5f32.copysign(y)) as i16;
        }
        s.push(max / 32767.0);
    }
}

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 (F, BW, VL) with F16C and FMA: 16 lanes.
    Avx512,
    /// AVX2 with FMA and F16C: 8 lanes.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl Isa {
    /// The best instruction set this CPU supports, detected once. `DERA_SIMD=avx2|portable`
    /// lowers it (for comparisons); a request the CPU cannot honour is ignored.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::available()[0];
            match std::env::var("DERA_SIMD").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if Isa::available().contains(&Isa::Avx2) => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// Whether this CPU runs `self` (detected once: every product asks).
    pub(crate) fn runs_here(self) -> bool {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(Isa::available).contains(&self)
    }

    /// Every instruction set this CPU can run, best first (always ends with `Portable`).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            if avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                out.push(Isa::Avx512);
            }
            if avx2 {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Portable);
        out
    }

    /// Short name (`avx512`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// Where a product's outputs go: the output of weight row `r` and activation row `c` at
/// `ptr + c * stride + r` (the `[m, n]` result, written in place by every task).
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub(crate) ptr: *mut f32,
    pub(crate) stride: usize,
}

impl Out {
    /// Writes a tile's outputs `(r0 + r, c0 + c)`.
    ///
    /// # Safety
    /// As [`Out::put`], for every output of the tile.
    #[inline(always)]
    unsafe fn store<const R: usize, const C: usize>(self, r0: usize, c0: usize, v: [[f32; C]; R]) {
        for (r, row) in v.iter().enumerate() {
            for (c, &x) in row.iter().enumerate() {
                // SAFETY: as for this function.
                unsafe { self.put(r0 + r, c0 + c, x) };
            }
        }
    }

    /// Writes output `(r, c)`.
    ///
    /// # Safety
    /// `(r, c)` is in the buffer and no other thread writes it.
    #[inline(always)]
    pub(crate) unsafe fn put(self, r: usize, c: usize, v: f32) {
        unsafe { *self.ptr.add(c * self.stride + r) = v }
    }
}

/// `out(r, c) = dot(row r of w, row c of x)` for `n` weight rows of `k` columns stored
/// contiguously in `w` (`row_bytes` each) and `m` activation rows of `k` values in `x`.
///
/// `isa` must be one of [`Isa::available`].
///
/// # Safety
/// `out` holds every output `(r, c)` for `r < n`, `c < m`, and no other thread writes them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn rows_dot(
    isa: Isa,
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    n: usize,
    x: &Acts<'_>,
    m: usize,
    k: usize,
    out: Out,
) {
    debug_assert!(w.len() >= n * row_bytes && x.f.len() >= m * k);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced by `available()` when the CPU has the features.
        Isa::Avx512 => unsafe { avx512::rows(format, w, row_bytes, n, x.f, &x.q, &x.s, m, k, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above for AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { avx2::rows(format, w, row_bytes, n, x.f, &x.q, &x.s, m, k, out) },
        // SAFETY: as for this function.
        _ => unsafe { portable::rows(format, w, row_bytes, n, x.f, m, k, out) },
    }
}

/// Runs `$step` for blocks `0..$nb`, even blocks into `$acc` and odd ones into `$odd`: two
/// independent chains of multiply-adds (one chain waited on the FMA latency at every block).
/// Expanded in place (no closure), so the step inlines into the target-feature function.
macro_rules! even_odd {
    ($nb:expr, $acc:ident, $odd:ident, |$b:ident, $a:ident| $step:expr) => {{
        let nb = $nb;
        let mut i = 0;
        while i + 2 <= nb {
            {
                let ($b, $a) = (i, &mut $acc);
                $step;
            }
            {
                let ($b, $a) = (i + 1, &mut $odd);
                $step;
            }
            i += 2;
        }
        if i < nb {
            let ($b, $a) = (i, &mut $acc);
            $step;
        }
    }};
}

/// The format a tile is compiled for (its `F` parameter), so that the choice is made once per
/// product, not in the inner loop (the compiler stopped hoisting it out once the kernels grew:
/// a single row ran 1.8x slower at `k = 128` on AVX2).
const F32: u8 = 0;
const BF16: u8 = 1;
const F16: u8 = 2;
const QUANT: u8 = 3;
/// Q4_1 blocks widened to `f32` in registers (`q * d + m`, the dequantized values exactly) and
/// multiplied as a dense format: the products of the dequantized matrix, bit for bit.
const Q4_1F: u8 = 4;
/// Q4_K super-blocks widened to `f32` the same way (`d_sub * q - m_sub`).
const Q4_KF: u8 = 5;
/// Q6_K super-blocks widened to `f32` the same way (`(d * scale) * q`).
const Q6_KF: u8 = 6;
/// Q5_K super-blocks: Q4_K's loop with each value's fifth bit.
const Q5_KF: u8 = 7;
/// Q5_0 blocks: Q4_1's loop with each value's fifth bit, `(q - 16) * d`.
const Q5_0F: u8 = 8;
/// Q5_1 blocks: Q4_1's loop with each value's fifth bit, `q * d + m`.
const Q5_1F: u8 = 9;
/// Q3_K super-blocks widened to `f32` (`(d * scale) * (q - 4 + 4 * high)`), 16 weights a group.
const Q3_KF: u8 = 10;
/// Q2_K super-blocks widened to `f32` (`d_g * q - m_g`), 16 weights a group.
const Q2_KF: u8 = 11;
/// IQ4_NL blocks widened to `f32` through the 16-value table (`d * kvalues[q]`).
const IQ4_NLF: u8 = 12;
/// IQ4_XS super-blocks likewise, with a scale per 32 weights.
const IQ4_XSF: u8 = 13;

/// `(bytes, weights)` of an IQ4 block or super-block, and whether it has sub-block scales.
const fn iq4_layout(f: u8) -> (usize, usize, bool) {
    if f == IQ4_XSF {
        (IQ4_XS_BYTES, QK_K, true)
    } else {
        (IQ4_NL_BYTES, BLOCK, false)
    }
}

/// The scales of an IQ4 block (one) or super-block (eight), as the dequantization computes them.
///
/// # Safety
/// `blk` points at a whole block of the format.
#[inline(always)]
unsafe fn iq4_scales(xs: bool, blk: *const u8) -> [f32; 8] {
    unsafe {
        if xs {
            crate::quant::iq4_xs_scales(std::slice::from_raw_parts(blk, IQ4_XS_BYTES))
        } else {
            let mut one = [0f32; 8];
            one[0] = crate::quant::block_scale(std::slice::from_raw_parts(blk, 2));
            one
        }
    }
}

/// The IQ4 table as f32, in two halves of eight (AVX2 looks up eight lanes at a time).
const IQ4_TABLE: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// A 32-weight block format's layout: bytes, offset of its `qh` word (`None`: four bits), offset
/// of its nibbles, and whether an f16 minimum follows the scale.
const fn small_block(f: u8) -> (usize, Option<usize>, usize, bool) {
    match f {
        Q5_0F => (Q5_0_BYTES, Some(2), 6, false),
        Q5_1F => (Q5_1_BYTES, Some(4), 8, true),
        _ => (Q4_1_BYTES, None, 4, true),
    }
}

/// One activation row (a decode step): `tile::<1, 1, F>` for each weight row in turn, into the
/// task's contiguous outputs `o` (no closure: it would not take the kernels' target features).
macro_rules! row_by_row {
    ($tile:ident, $f:ident, $fmt:expr, $w:expr, $rb:expr, $x:expr, $k:expr, $o:expr) => {
        for (r, o) in $o.iter_mut().enumerate() {
            *o = $tile::<1, 1, { $f }>($fmt, $w, $rb, r, $x, $k, 0)[0][0];
        }
    };
}

/// Runs `tile::<RT, CT>` over the `n x m` outputs: with at least `CT` activation rows (a batch
/// or a prefill, compute-bound), `RT` weight rows at a time so each activation load feeds `RT`
/// multiply-adds; fewer activation rows (a decode step, bandwidth-bound) walk one weight row at a
/// time, the one sequential stream the prefetchers follow. Within a group of weight rows the
/// activation rows go `CT` at a time and the last `m % CT` as one narrower tile, so every weight
/// vector is loaded (and widened) once per `CT` activations, whatever `m` (a batch of 7 cost
/// 1.6x a batch of 8 when the last three went one by one). Edges use single weight rows. Every
/// output is one accumulator chain over the same columns in the same order whatever the tile,
/// so the tiling never changes a bit. `CT` is 4.
macro_rules! drive {
    ($tile:ident, $f:ident, $rt:expr, $ct:literal, $fmt:expr, $w:expr, $rb:expr, $n:expr, $x:expr, $m:expr, $k:expr, $out:expr) => {{
        let (w, rb, n, x, m, k, out) = ($w, $rb, $n, $x, $m, $k, $out);
        let mut r = 0;
        if m >= $ct {
            while n - r >= $rt {
                drive!(@cols $tile, $f, $rt, $ct, $fmt, w, rb, r, x, m, k, out);
                r += $rt;
            }
        }
        while r < n {
            drive!(@cols $tile, $f, 1, $ct, $fmt, w, rb, r, x, m, k, out);
            r += 1;
        }
    }};
    (@cols $tile:ident, $f:ident, $r:expr, $ct:literal, $fmt:expr, $w:expr, $rb:expr, $r0:expr, $x:expr, $m:expr, $k:expr, $out:expr) => {{
        let (w, rb, r0, x, m, k, out) = ($w, $rb, $r0, $x, $m, $k, $out);
        let mut c = 0;
        while c + $ct <= m {
            out.store(r0, c, $tile::<$r, $ct, { $f }>($fmt, w, rb, r0, x, k, c));
            c += $ct;
        }
        match m - c {
            0 => {}
            1 => out.store(r0, c, $tile::<$r, 1, { $f }>($fmt, w, rb, r0, x, k, c)),
            2 => out.store(r0, c, $tile::<$r, 2, { $f }>($fmt, w, rb, r0, x, k, c)),
            _ => out.store(r0, c, $tile::<$r, 3, { $f }>($fmt, w, rb, r0, x, k, c)),
        }
    }};
}

/// Scalar value `j` of a dense row (f32, bf16 or f16 little-endian).
#[inline(always)]
fn dense_at(format: WeightFormat, row: &[u8], j: usize) -> f32 {
    match format {
        WeightFormat::F32 => {
            f32::from_le_bytes([row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]])
        }
        WeightFormat::Bf16 => {
            f32::from_bits(u32::from(u16::from_le_bytes([row[2 * j], row[2 * j + 1]])) << 16)
        }
        _ => half::f16::from_bits(u16::from_le_bytes([row[2 * j], row[2 * j + 1]])).to_f32(),
    }
}

/// Per activation row of a tile: its 16-bit values and its block scales.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn int_acts<const C: usize>(
    x: View<'_>,
    k: usize,
    c0: usize,
) -> [(*const i16, *const f32); C] {
    std::array::from_fn(|c| unsafe {
        (
            x.q.as_ptr().add((c0 + c) * k),
            x.s.as_ptr().add((c0 + c) * (k / BLOCK)),
        )
    })
}

/// The 32 weights of a Q8_0 / Q4_0 block as signed bytes in order (Q4_0: byte `j` holds weight
/// `j` in its low nibble and weight `j + 16` in its high one, both offset by 8).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_i8(q8: bool, blk: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    unsafe {
        if q8 {
            _mm256_loadu_si256(blk.add(2) as *const __m256i)
        } else {
            let v = _mm_loadu_si128(blk.add(2) as *const __m128i);
            let low = _mm_set1_epi8(0x0F);
            let eight = _mm_set1_epi8(8);
            let lo = _mm_sub_epi8(_mm_and_si128(v, low), eight);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16::<4>(v), low), eight);
            _mm256_set_m128i(hi, lo)
        }
    }
}

mod portable {
    use super::*;

    /// Partial sums per output, like the vector paths.
    const L: usize = 8;

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        n: usize,
        xf: &[f32],
        m: usize,
        k: usize,
        out: Out,
    ) {
        let mut wrow = vec![0f32; k];
        for r in 0..n {
            let row = &w[r * rb..(r + 1) * rb];
            crate::matrix::decode_row(format, row, &mut wrow);
            for c in 0..m {
                let xr = &xf[c * k..(c + 1) * k];
                let mut acc = [0f32; L];
                let full = k / L * L;
                for (wc, xc) in wrow[..full].chunks_exact(L).zip(xr[..full].chunks_exact(L)) {
                    for l in 0..L {
                        acc[l] += wc[l] * xc[l];
                    }
                }
                let mut s = acc.iter().sum::<f32>();
                for j in full..k {
                    s += wrow[j] * xr[j];
                }
                // SAFETY: as for `rows_dot`.
                unsafe { out.put(r, c, s) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    const L: usize = 16;

    /// `acc[r][c] += w[r] * x[c][i .. i + 16]` for every weight row `r` and activation row `c`
    /// of a tile (one fused multiply-add each: the dense formats' order).
    #[inline(always)]
    unsafe fn madd_rows<const R: usize, const C: usize>(
        acc: &mut [[__m512; C]; R],
        wv: &[__m512; R],
        xp: &[*const f32; C],
        i: usize,
    ) {
        unsafe {
            for c in 0..C {
                let xv = _mm512_loadu_ps(xp[c].add(i));
                for r in 0..R {
                    acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
                }
            }
        }
    }

    /// The f16 block scale at the start of the block at `p`, broadcast. Converted from an
    /// 8-byte load (the scale and the first quants; a block has at least 18 bytes), so the
    /// conversion depends on nothing but memory: building the scale through a register insert
    /// tied it to the accumulator and serialised the loop.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> __m512 {
        unsafe { _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))) }
    }

    /// The sums of sixteen accumulators at once, each by the
    /// additions of `_mm512_reduce_add_ps` in the same order (the two halves, then the two
    /// quarters, then lanes `i` and `i + 2`, then the last two), so each sum has the bits of its
    /// own reduction; a tile reduced one output at a time spent as long in the reductions as in
    /// its multiply-adds at `k = 128`. Sum `i` lands in lane `4 * (i % 4) + i / 4`.
    #[inline(always)]
    pub(super) unsafe fn reduce16(v: &[__m512; 16]) -> [f32; 16] {
        // Plain loops and no closures: inside the kernels' `target_feature` functions this
        // always inlines (with closures, one more tile shape made a 4 x 3 tile 4x slower).
        unsafe {
            let mut s = [_mm512_setzero_ps(); 8];
            for p in 0..8 {
                let (a, b) = (v[2 * p], v[2 * p + 1]);
                s[p] = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0x44>(a, b),
                    _mm512_shuffle_f32x4::<0xEE>(a, b),
                );
            }
            let mut t = [_mm512_setzero_ps(); 4];
            for q in 0..4 {
                let (x, y) = (s[2 * q], s[2 * q + 1]);
                t[q] = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0x88>(x, y),
                    _mm512_shuffle_f32x4::<0xDD>(x, y),
                );
            }
            let mut u = [_mm512_setzero_ps(); 2];
            for w in 0..2 {
                let (x, y) = (t[2 * w], t[2 * w + 1]);
                u[w] = _mm512_add_ps(
                    _mm512_shuffle_ps::<0x44>(x, y),
                    _mm512_shuffle_ps::<0xEE>(x, y),
                );
            }
            let r = _mm512_add_ps(
                _mm512_shuffle_ps::<0x88>(u[0], u[1]),
                _mm512_shuffle_ps::<0xDD>(u[0], u[1]),
            );
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), r);
            out
        }
    }

    /// The sums of a tile's `R x C` accumulators, row-major: one at a time for fewer than six
    /// outputs, [`reduce16`] (padded with zeros) for more; the same bits either way.
    #[inline(always)]
    unsafe fn sums<const R: usize, const C: usize>(acc: &[[__m512; C]; R]) -> [[f32; C]; R] {
        unsafe {
            let mut out = [[0f32; C]; R];
            if R * C < 6 || R * C > 16 {
                for r in 0..R {
                    for c in 0..C {
                        out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
                    }
                }
                return out;
            }
            let mut flat = [_mm512_setzero_ps(); 16];
            for r in 0..R {
                for c in 0..C {
                    flat[r * C + c] = acc[r][c];
                }
            }
            let lanes = reduce16(&flat);
            for (r, row) in out.iter_mut().enumerate() {
                for (c, o) in row.iter_mut().enumerate() {
                    let i = r * C + c;
                    *o = lanes[4 * (i % 4) + i / 4];
                }
            }
            out
        }
    }

    #[inline(always)]
    unsafe fn load_dense<const F: u8>(p: *const u8, i: usize) -> __m512 {
        unsafe {
            match F {
                F32 => _mm512_loadu_ps(p.add(4 * i) as *const f32),
                BF16 => {
                    let h = _mm256_loadu_si256(p.add(2 * i) as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                }
                _ => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i)),
            }
        }
    }

    /// Adds block `b` of every weight row times the activations to `acc` (Q8_0 or Q4_0): the
    /// block's 32 weights widened to 16 bits times the activations' 16-bit values, summed in
    /// pairs exactly (`madd`), converted once and scaled by both block scales.
    #[inline(always)]
    unsafe fn qblock<const R: usize, const C: usize>(
        format: WeightFormat,
        wp: &[*const u8; R],
        qs: &[(*const i16, *const f32); C],
        b: usize,
        acc: &mut [[__m512; C]; R],
    ) {
        unsafe {
            let q8 = format == WeightFormat::Q8_0;
            let bytes = if q8 { Q8_0_BYTES } else { Q4_0_BYTES };
            let mut d = [_mm512_setzero_ps(); R];
            let mut w = [_mm512_setzero_si512(); R];
            for r in 0..R {
                let blk = wp[r].add(b * bytes);
                d[r] = scale(blk);
                w[r] = _mm512_cvtepi8_epi16(block_i8(q8, blk));
            }
            for c in 0..C {
                let xq = _mm512_loadu_si512(qs[c].0.add(b * BLOCK) as *const _);
                let sx = _mm512_set1_ps(*qs[c].1.add(b));
                for r in 0..R {
                    let p = _mm512_cvtepi32_ps(_mm512_madd_epi16(w[r], xq));
                    acc[r][c] = _mm512_fmadd_ps(p, _mm512_mul_ps(d[r], sx), acc[r][c]);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize, const F: u8>(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        r0: usize,
        x: View<'_>,
        k: usize,
        c0: usize,
    ) -> [[f32; C]; R] {
        unsafe {
            let wp: [*const u8; R] = std::array::from_fn(|r| w.as_ptr().add((r0 + r) * rb));
            let xp: [*const f32; C] = std::array::from_fn(|c| x.f.as_ptr().add((c0 + c) * k));
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            match F {
                QUANT => {
                    let qs = int_acts::<C>(x, k, c0);
                    let mut odd = [[_mm512_setzero_ps(); C]; R];
                    even_odd!(k / BLOCK, acc, odd, |b, a| qblock::<R, C>(
                        format, &wp, &qs, b, a
                    ));
                    for r in 0..R {
                        for c in 0..C {
                            acc[r][c] = _mm512_add_ps(acc[r][c], odd[r][c]);
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q4_1F | Q5_0F | Q5_1F => {
                    // Per block: scale, minimum, fifth bits and the 16 bytes once per row, then
                    // the low nibbles (weights 0..16) and the high ones (16..32), each with its
                    // fifth bit (bit `j` of `qh` for weight `j`), as `q * d + m` (Q5_0: `(q -
                    // 16) * d`), the dequantized values, multiplied in the dense loop's order.
                    let (bytes, qh_at, qs_at, has_min) = small_block(F);
                    let mask = _mm512_set1_epi32(0x0F);
                    let (one, sixteen) = (_mm512_set1_epi32(1), _mm512_set1_epi32(16));
                    let lanes =
                        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                    for b in 0..k / BLOCK {
                        let mut d = [_mm512_setzero_ps(); R];
                        let mut mn = [_mm512_setzero_ps(); R];
                        let mut v = [_mm512_setzero_si512(); R];
                        let mut qh = [_mm512_setzero_si512(); R];
                        for r in 0..R {
                            let blk = wp[r].add(b * bytes);
                            d[r] = scale(blk);
                            if has_min {
                                mn[r] = scale(blk.add(2));
                            }
                            if let Some(at) = qh_at {
                                let word = (blk.add(at) as *const u32).read_unaligned();
                                qh[r] = _mm512_set1_epi32(word as i32);
                            }
                            v[r] =
                                _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(qs_at) as *const _));
                        }
                        for h in 0..2 {
                            let mut wv = [_mm512_setzero_ps(); R];
                            let shift = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * h as i32));
                            for r in 0..R {
                                let q = if h == 0 {
                                    v[r]
                                } else {
                                    _mm512_srli_epi32::<4>(v[r])
                                };
                                let mut q = _mm512_and_si512(q, mask);
                                if qh_at.is_some() {
                                    let bit =
                                        _mm512_and_si512(_mm512_srlv_epi32(qh[r], shift), one);
                                    q = _mm512_or_si512(q, _mm512_slli_epi32::<4>(bit));
                                }
                                wv[r] = if F == Q5_0F {
                                    let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, sixteen));
                                    _mm512_mul_ps(q, d[r])
                                } else {
                                    _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q), d[r]), mn[r])
                                };
                            }
                            let i = b * BLOCK + h * L;
                            madd_rows(&mut acc, &wv, &xp, i);
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q4_KF | Q5_KF => {
                    // Per super-block and row: the eight sub-block scales and minimums (scalar,
                    // as ggml computes them); per 64-weight chunk its 32 bytes, low nibbles
                    // (two vectors of 16) then high nibbles (Q5_K: plus 16 for bit `sub` of the
                    // value's high-bit byte), as `d_sub * q - m_sub`.
                    let five = F == Q5_KF;
                    let (bytes, qs_at) = if five {
                        (Q5_K_BYTES, 48)
                    } else {
                        (Q4_K_BYTES, 16)
                    };
                    let (mask, one) = (_mm512_set1_epi32(0x0F), _mm512_set1_epi32(1));
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 8]; R];
                        let mut ms = [[0f32; 8]; R];
                        let mut qh = [[_mm512_setzero_si512(); 2]; R];
                        for r in 0..R {
                            let blk = wp[r].add(b * bytes);
                            (ds[r], ms[r]) =
                                crate::quant::q4_k_scales(std::slice::from_raw_parts(blk, 16));
                            if five {
                                for (e, h) in qh[r].iter_mut().enumerate() {
                                    *h = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                        blk.add(16 + 16 * e) as *const __m128i,
                                    ));
                                }
                            }
                        }
                        for chunk in 0..4 {
                            let mut v = [[_mm512_setzero_si512(); 2]; R];
                            for r in 0..R {
                                let qs = wp[r].add(b * bytes + qs_at + 32 * chunk);
                                for (e, v) in v[r].iter_mut().enumerate() {
                                    *v = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                        qs.add(16 * e) as *const __m128i
                                    ));
                                }
                            }
                            for part in 0..4 {
                                let (high, e) = (part / 2, part % 2);
                                let sub = 2 * chunk + high;
                                let mut wv = [_mm512_setzero_ps(); R];
                                for r in 0..R {
                                    let q = if high == 0 {
                                        v[r][e]
                                    } else {
                                        _mm512_srli_epi32::<4>(v[r][e])
                                    };
                                    let mut q = _mm512_and_si512(q, mask);
                                    if five {
                                        let bit = _mm_cvtsi32_si128(sub as i32);
                                        let h =
                                            _mm512_and_si512(_mm512_srl_epi32(qh[r][e], bit), one);
                                        q = _mm512_or_si512(q, _mm512_slli_epi32::<4>(h));
                                    }
                                    let q = _mm512_cvtepi32_ps(q);
                                    wv[r] = _mm512_sub_ps(
                                        _mm512_mul_ps(_mm512_set1_ps(ds[r][sub]), q),
                                        _mm512_set1_ps(ms[r][sub]),
                                    );
                                }
                                let i = b * QK_K + 64 * chunk + L * part;
                                madd_rows(&mut acc, &wv, &xp, i);
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                IQ4_NLF | IQ4_XSF => {
                    // Per block (IQ4_XS: per sub-block of 32) and row: its scale and 16 bytes of
                    // indices, low nibbles (weights 0..16) then high ones (16..32), each looked
                    // up in the 16-value table in one permute: `scale * kvalues[q]`.
                    let (bytes, per, xs) = iq4_layout(F);
                    let table = _mm512_loadu_ps(IQ4_TABLE.as_ptr());
                    let mask = _mm512_set1_epi32(0x0F);
                    for b in 0..k / per {
                        let mut dl = [[0f32; 8]; R];
                        for r in 0..R {
                            dl[r] = iq4_scales(xs, wp[r].add(b * bytes));
                        }
                        #[allow(clippy::needless_range_loop)] // `sub` also places the weights
                        for sub in 0..per / BLOCK {
                            let at = if xs { 8 + 16 * sub } else { 2 };
                            let mut v = [_mm512_setzero_si512(); R];
                            for r in 0..R {
                                let q = wp[r].add(b * bytes + at);
                                v[r] = _mm512_cvtepu8_epi32(_mm_loadu_si128(q as *const _));
                            }
                            for h in 0..2 {
                                let mut wv = [_mm512_setzero_ps(); R];
                                for r in 0..R {
                                    let q = if h == 0 {
                                        v[r]
                                    } else {
                                        _mm512_srli_epi32::<4>(v[r])
                                    };
                                    let val =
                                        _mm512_permutexvar_ps(_mm512_and_si512(q, mask), table);
                                    wv[r] = _mm512_mul_ps(_mm512_set1_ps(dl[r][sub]), val);
                                }
                                madd_rows(&mut acc, &wv, &xp, b * per + BLOCK * sub + L * h);
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q2_KF => {
                    // Per super-block and row: the sixteen sub-block scales and minimums and
                    // the 64 bytes of 2-bit values, widened once; group `g` of 16 weights takes
                    // bit pair `j` of 16 of them: `d_g * q - m_g`.
                    let pair = _mm512_set1_epi32(3);
                    let widen = |p: *const u8| _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const _));
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 16]; R];
                        let mut ms = [[0f32; 16]; R];
                        let mut qv = [[_mm512_setzero_si512(); 4]; R];
                        for r in 0..R {
                            let blk = wp[r].add(b * Q2_K_BYTES);
                            (ds[r], ms[r]) =
                                crate::quant::q2_k_scales(std::slice::from_raw_parts(blk, 84));
                            for (i, v) in qv[r].iter_mut().enumerate() {
                                *v = widen(blk.add(16 + 16 * i));
                            }
                        }
                        for g in 0..16 {
                            let (half, j, s) = (g / 8, g % 8 / 2, g % 2);
                            let qs = _mm_cvtsi32_si128(2 * j as i32);
                            let mut wv = [_mm512_setzero_ps(); R];
                            for r in 0..R {
                                let q = _mm512_and_si512(
                                    _mm512_srl_epi32(qv[r][2 * half + s], qs),
                                    pair,
                                );
                                let at = 8 * half + 2 * j + s;
                                wv[r] = _mm512_sub_ps(
                                    _mm512_mul_ps(_mm512_set1_ps(ds[r][at]), _mm512_cvtepi32_ps(q)),
                                    _mm512_set1_ps(ms[r][at]),
                                );
                            }
                            madd_rows(&mut acc, &wv, &xp, b * QK_K + 16 * g);
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q3_KF => {
                    // Per super-block and row: the sixteen sub-block scales `d * (scale - 32)`
                    // and the block's 64 bytes of 2-bit values and 32 high-bit bytes, widened
                    // once; group `g` of 16 weights takes bit pair `j` of 16 of the former and bit
                    // `4 * half + j` of 16 of the latter: `(d * scale) * (q - 4 + 4 * high)`.
                    let (pair, one, four) = (
                        _mm512_set1_epi32(3),
                        _mm512_set1_epi32(1),
                        _mm512_set1_epi32(4),
                    );
                    let widen = |p: *const u8| _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const _));
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 16]; R];
                        let mut qv = [[_mm512_setzero_si512(); 4]; R];
                        let mut hv = [[_mm512_setzero_si512(); 2]; R];
                        for r in 0..R {
                            let blk = wp[r].add(b * Q3_K_BYTES);
                            ds[r] = crate::quant::q3_k_scales(std::slice::from_raw_parts(blk, 110));
                            for (i, v) in qv[r].iter_mut().enumerate() {
                                *v = widen(blk.add(32 + 16 * i));
                            }
                            for (i, v) in hv[r].iter_mut().enumerate() {
                                *v = widen(blk.add(16 * i));
                            }
                        }
                        for g in 0..16 {
                            let (half, j, s) = (g / 8, g % 8 / 2, g % 2);
                            let (qs, hs) = (
                                _mm_cvtsi32_si128(2 * j as i32),
                                _mm_cvtsi32_si128((4 * half + j) as i32),
                            );
                            let mut wv = [_mm512_setzero_ps(); R];
                            for r in 0..R {
                                let q = _mm512_and_si512(
                                    _mm512_srl_epi32(qv[r][2 * half + s], qs),
                                    pair,
                                );
                                let h = _mm512_and_si512(_mm512_srl_epi32(hv[r][s], hs), one);
                                let v = _mm512_sub_epi32(
                                    _mm512_add_epi32(q, _mm512_slli_epi32::<2>(h)),
                                    four,
                                );
                                let sc = ds[r][8 * half + 2 * j + s];
                                wv[r] = _mm512_mul_ps(_mm512_set1_ps(sc), _mm512_cvtepi32_ps(v));
                            }
                            madd_rows(&mut acc, &wv, &xp, b * QK_K + 16 * g);
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q6_KF => {
                    // Per super-block and row: the sixteen sub-block scales `d * scale`; per half
                    // of 128 weights, group `g` of 32 is low (`g < 2`) or high nibbles of 32
                    // bytes with bit pair `g` of the high bits, 16 at a time, `(d * scale) * q`.
                    let (low, pair) = (_mm512_set1_epi32(0x0F), _mm512_set1_epi32(3));
                    let thirty_two = _mm512_set1_epi32(32);
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 16]; R];
                        for r in 0..R {
                            let blk = std::slice::from_raw_parts(wp[r].add(b * Q6_K_BYTES), 210);
                            ds[r] = crate::quant::q6_k_scales(blk);
                        }
                        for half in 0..2 {
                            for g in 0..4 {
                                for sixteen in 0..2 {
                                    let mut wv = [_mm512_setzero_ps(); R];
                                    for r in 0..R {
                                        let blk = wp[r].add(b * Q6_K_BYTES);
                                        let ql = blk.add(64 * half + 32 * (g % 2) + 16 * sixteen);
                                        let qh = blk.add(128 + 32 * half + 16 * sixteen);
                                        let ql =
                                            _mm512_cvtepu8_epi32(_mm_loadu_si128(ql as *const _));
                                        let qh =
                                            _mm512_cvtepu8_epi32(_mm_loadu_si128(qh as *const _));
                                        let nib = if g < 2 {
                                            ql
                                        } else {
                                            _mm512_srli_epi32::<4>(ql)
                                        };
                                        let shift = _mm_cvtsi32_si128(2 * g as i32);
                                        let hb =
                                            _mm512_and_si512(_mm512_srl_epi32(qh, shift), pair);
                                        let q = _mm512_sub_epi32(
                                            _mm512_or_si512(
                                                _mm512_and_si512(nib, low),
                                                _mm512_slli_epi32::<4>(hb),
                                            ),
                                            thirty_two,
                                        );
                                        let sc = ds[r][8 * half + sixteen + 2 * g];
                                        wv[r] = _mm512_mul_ps(
                                            _mm512_set1_ps(sc),
                                            _mm512_cvtepi32_ps(q),
                                        );
                                    }
                                    let i = b * QK_K + 128 * half + 32 * g + L * sixteen;
                                    madd_rows(&mut acc, &wv, &xp, i);
                                }
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                _ => {
                    let full = k / L * L;
                    let mut i = 0;
                    while i < full {
                        let mut wv = [_mm512_setzero_ps(); R];
                        for r in 0..R {
                            wv[r] = load_dense::<F>(wp[r], i);
                        }
                        madd_rows(&mut acc, &wv, &xp, i);
                        i += L;
                    }
                    let mut sums = sums::<R, C>(&acc);
                    if full < k {
                        for (r, row_sums) in sums.iter_mut().enumerate() {
                            let row = std::slice::from_raw_parts(wp[r], rb);
                            for (c, s) in row_sums.iter_mut().enumerate() {
                                for j in full..k {
                                    *s += dense_at(format, row, j) * *xp[c].add(j);
                                }
                            }
                        }
                    }
                    sums
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn rows(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        n: usize,
        f: &[f32],
        q: &[i16],
        s: &[f32],
        m: usize,
        k: usize,
        out: Out,
    ) {
        let x = View { f, q, s };
        unsafe {
            if m == 1 {
                // A decode step: one weight row after the other, outside `drive!` (through its
                // column match the single row ran 10-90% slower).
                // SAFETY: with one activation row the task's outputs are `n` contiguous values.
                let o = std::slice::from_raw_parts_mut(out.ptr, n);
                match format {
                    WeightFormat::F32 => row_by_row!(tile, F32, format, w, rb, x, k, o),
                    WeightFormat::Bf16 => row_by_row!(tile, BF16, format, w, rb, x, k, o),
                    WeightFormat::F16 => row_by_row!(tile, F16, format, w, rb, x, k, o),
                    WeightFormat::Q4_1 => row_by_row!(tile, Q4_1F, format, w, rb, x, k, o),
                    WeightFormat::Q5_0 => row_by_row!(tile, Q5_0F, format, w, rb, x, k, o),
                    WeightFormat::Q5_1 => row_by_row!(tile, Q5_1F, format, w, rb, x, k, o),
                    WeightFormat::Q2K => row_by_row!(tile, Q2_KF, format, w, rb, x, k, o),
                    WeightFormat::Iq4Nl => row_by_row!(tile, IQ4_NLF, format, w, rb, x, k, o),
                    WeightFormat::Iq4Xs => row_by_row!(tile, IQ4_XSF, format, w, rb, x, k, o),
                    WeightFormat::Q3K => row_by_row!(tile, Q3_KF, format, w, rb, x, k, o),
                    WeightFormat::Q4K => row_by_row!(tile, Q4_KF, format, w, rb, x, k, o),
                    WeightFormat::Q5K => row_by_row!(tile, Q5_KF, format, w, rb, x, k, o),
                    WeightFormat::Q6K => row_by_row!(tile, Q6_KF, format, w, rb, x, k, o),
                    _ => row_by_row!(tile, QUANT, format, w, rb, x, k, o),
                }
            } else {
                match format {
                    // Two accumulators per output: 2 x 4 tiles fit the 32 registers.
                    WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                        drive!(tile, QUANT, 2, 4, format, w, rb, n, x, m, k, out)
                    }
                    WeightFormat::F32 => drive!(tile, F32, 4, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Bf16 => drive!(tile, BF16, 4, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::F16 => drive!(tile, F16, 4, 4, format, w, rb, n, x, m, k, out),
                    // 2 x 4: the block's scales and bytes take registers too.
                    WeightFormat::Q4_1 => drive!(tile, Q4_1F, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q5_0 => drive!(tile, Q5_0F, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q5_1 => drive!(tile, Q5_1F, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q2K => drive!(tile, Q2_KF, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Iq4Nl => {
                        drive!(tile, IQ4_NLF, 2, 4, format, w, rb, n, x, m, k, out)
                    }
                    WeightFormat::Iq4Xs => {
                        drive!(tile, IQ4_XSF, 2, 4, format, w, rb, n, x, m, k, out)
                    }
                    WeightFormat::Q3K => drive!(tile, Q3_KF, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q4K => drive!(tile, Q4_KF, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q5K => drive!(tile, Q5_KF, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q6K => drive!(tile, Q6_KF, 2, 4, format, w, rb, n, x, m, k, out),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    const L: usize = 8;

    /// `acc[r][c] += w[r] * x[c][i .. i + 8]` for every weight row `r` and activation row `c`
    /// of a tile (one fused multiply-add each: the dense formats' order).
    #[inline(always)]
    unsafe fn madd_rows<const R: usize, const C: usize>(
        acc: &mut [[__m256; C]; R],
        wv: &[__m256; R],
        xp: &[*const f32; C],
        i: usize,
    ) {
        unsafe {
            for c in 0..C {
                let xv = _mm256_loadu_ps(xp[c].add(i));
                for r in 0..R {
                    acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
                }
            }
        }
    }

    /// The f16 block scale at the start of the block at `p`, broadcast. Converted from an
    /// 8-byte load (the scale and the first quants; a block has at least 18 bytes), so the
    /// conversion depends on nothing but memory: building the scale through a register insert
    /// tied it to the accumulator and serialised the loop.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> __m256 {
        unsafe { _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))) }
    }

    #[inline(always)]
    unsafe fn load_dense<const F: u8>(p: *const u8, i: usize) -> __m256 {
        unsafe {
            match F {
                F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
                BF16 => {
                    let h = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                }
                _ => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            }
        }
    }

    #[inline(always)]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// The sums of eight accumulators at once, each by the
    /// additions of [`hsum`] in the same order (the two halves, then lanes `i` and `i + 2`,
    /// then the last two): the bits of eight separate sums. Sum `i` lands in lane
    /// `4 * (i % 2) + i / 2`.
    #[inline(always)]
    pub(super) unsafe fn reduce8(v: &[__m256; 8]) -> [f32; 8] {
        // Plain loops and no closures, as `avx512::reduce16`.
        unsafe {
            let mut s = [_mm256_setzero_ps(); 4];
            for p in 0..4 {
                let (a, b) = (v[2 * p], v[2 * p + 1]);
                s[p] = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(a, b),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                );
            }
            let mut u = [_mm256_setzero_ps(); 2];
            for w in 0..2 {
                let (x, y) = (s[2 * w], s[2 * w + 1]);
                u[w] = _mm256_add_ps(
                    _mm256_shuffle_ps::<0x44>(x, y),
                    _mm256_shuffle_ps::<0xEE>(x, y),
                );
            }
            let r = _mm256_add_ps(
                _mm256_shuffle_ps::<0x88>(u[0], u[1]),
                _mm256_shuffle_ps::<0xDD>(u[0], u[1]),
            );
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), r);
            out
        }
    }

    /// The sums of a tile's `R x C` accumulators, row-major: one at a time for fewer than
    /// six outputs, [`reduce8`] (padded with zeros) for more; the same bits either way.
    #[inline(always)]
    unsafe fn sums<const R: usize, const C: usize>(acc: &[[__m256; C]; R]) -> [[f32; C]; R] {
        unsafe {
            let mut out = [[0f32; C]; R];
            if R * C < 6 || R * C > 8 {
                for r in 0..R {
                    for c in 0..C {
                        out[r][c] = hsum(acc[r][c]);
                    }
                }
                return out;
            }
            let mut flat = [_mm256_setzero_ps(); 8];
            for r in 0..R {
                for c in 0..C {
                    flat[r * C + c] = acc[r][c];
                }
            }
            let lanes = reduce8(&flat);
            for (r, row) in out.iter_mut().enumerate() {
                for (c, o) in row.iter_mut().enumerate() {
                    let i = r * C + c;
                    *o = lanes[4 * (i % 2) + i / 2];
                }
            }
            out
        }
    }

    /// Adds block `b` of every weight row times the activations to `acc` (Q8_0 or Q4_0), in
    /// 16-bit integers as the AVX-512 path (two halves added exactly before the conversion).
    #[inline(always)]
    unsafe fn qblock<const R: usize, const C: usize>(
        format: WeightFormat,
        wp: &[*const u8; R],
        qs: &[(*const i16, *const f32); C],
        b: usize,
        acc: &mut [[__m256; C]; R],
    ) {
        unsafe {
            let q8 = format == WeightFormat::Q8_0;
            let bytes = if q8 { Q8_0_BYTES } else { Q4_0_BYTES };
            let mut d = [_mm256_setzero_ps(); R];
            let mut w = [[_mm256_setzero_si256(); 2]; R];
            for r in 0..R {
                let blk = wp[r].add(b * bytes);
                d[r] = scale(blk);
                let v = block_i8(q8, blk);
                w[r][0] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
                w[r][1] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v));
            }
            for c in 0..C {
                let xb = qs[c].0.add(b * BLOCK);
                let x0 = _mm256_loadu_si256(xb as *const __m256i);
                let x1 = _mm256_loadu_si256(xb.add(16) as *const __m256i);
                let sx = _mm256_set1_ps(*qs[c].1.add(b));
                for r in 0..R {
                    let p = _mm256_add_epi32(
                        _mm256_madd_epi16(w[r][0], x0),
                        _mm256_madd_epi16(w[r][1], x1),
                    );
                    acc[r][c] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(d[r], sx), acc[r][c]);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize, const F: u8>(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        r0: usize,
        x: View<'_>,
        k: usize,
        c0: usize,
    ) -> [[f32; C]; R] {
        unsafe {
            let wp: [*const u8; R] = std::array::from_fn(|r| w.as_ptr().add((r0 + r) * rb));
            let xp: [*const f32; C] = std::array::from_fn(|c| x.f.as_ptr().add((c0 + c) * k));
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            match F {
                QUANT => {
                    let qs = int_acts::<C>(x, k, c0);
                    let mut odd = [[_mm256_setzero_ps(); C]; R];
                    even_odd!(k / BLOCK, acc, odd, |b, a| qblock::<R, C>(
                        format, &wp, &qs, b, a
                    ));
                    for r in 0..R {
                        for c in 0..C {
                            acc[r][c] = _mm256_add_ps(acc[r][c], odd[r][c]);
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q4_1F | Q5_0F | Q5_1F => {
                    // As the AVX-512 loop, in quarters of a block: the low nibbles of bytes
                    // 0..8 and 8..16 (weights 0..16), then their high nibbles (16..32), each
                    // with its fifth bit for Q5_0 / Q5_1.
                    let (bytes, qh_at, qs_at, has_min) = small_block(F);
                    let mask = _mm256_set1_epi32(0x0F);
                    let (one, sixteen) = (_mm256_set1_epi32(1), _mm256_set1_epi32(16));
                    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    for b in 0..k / BLOCK {
                        let mut d = [_mm256_setzero_ps(); R];
                        let mut mn = [_mm256_setzero_ps(); R];
                        let mut v = [[_mm256_setzero_si256(); 2]; R];
                        let mut qh = [_mm256_setzero_si256(); R];
                        for r in 0..R {
                            let blk = wp[r].add(b * bytes);
                            d[r] = scale(blk);
                            if has_min {
                                mn[r] = scale(blk.add(2));
                            }
                            if let Some(at) = qh_at {
                                let word = (blk.add(at) as *const u32).read_unaligned();
                                qh[r] = _mm256_set1_epi32(word as i32);
                            }
                            for (e, v) in v[r].iter_mut().enumerate() {
                                *v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                    blk.add(qs_at + 8 * e) as *const __m128i
                                ));
                            }
                        }
                        for quarter in 0..4 {
                            let mut wv = [_mm256_setzero_ps(); R];
                            let shift =
                                _mm256_add_epi32(lanes, _mm256_set1_epi32(8 * quarter as i32));
                            for r in 0..R {
                                let q = v[r][quarter % 2];
                                let q = if quarter < 2 {
                                    q
                                } else {
                                    _mm256_srli_epi32::<4>(q)
                                };
                                let mut q = _mm256_and_si256(q, mask);
                                if qh_at.is_some() {
                                    let bit =
                                        _mm256_and_si256(_mm256_srlv_epi32(qh[r], shift), one);
                                    q = _mm256_or_si256(q, _mm256_slli_epi32::<4>(bit));
                                }
                                wv[r] = if F == Q5_0F {
                                    let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, sixteen));
                                    _mm256_mul_ps(q, d[r])
                                } else {
                                    _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), d[r]), mn[r])
                                };
                            }
                            let i = b * BLOCK + quarter * L;
                            madd_rows(&mut acc, &wv, &xp, i);
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q4_KF | Q5_KF => {
                    // As the AVX-512 loop, eight weights at a time: per 64-weight chunk the low
                    // nibbles of its four 8-byte groups, then their high nibbles.
                    let five = F == Q5_KF;
                    let (bytes, qs_at) = if five {
                        (Q5_K_BYTES, 48)
                    } else {
                        (Q4_K_BYTES, 16)
                    };
                    let (mask, one) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(1));
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 8]; R];
                        let mut ms = [[0f32; 8]; R];
                        for r in 0..R {
                            let blk = std::slice::from_raw_parts(wp[r].add(b * bytes), 16);
                            (ds[r], ms[r]) = crate::quant::q4_k_scales(blk);
                        }
                        for chunk in 0..4 {
                            for part in 0..8 {
                                let (high, e) = (part / 4, part % 4);
                                let sub = 2 * chunk + high;
                                let mut wv = [_mm256_setzero_ps(); R];
                                for r in 0..R {
                                    let blk = wp[r].add(b * bytes);
                                    let qs = blk.add(qs_at + 32 * chunk + 8 * e);
                                    let q =
                                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs as *const __m128i));
                                    let q = if high == 0 {
                                        q
                                    } else {
                                        _mm256_srli_epi32::<4>(q)
                                    };
                                    let mut q = _mm256_and_si256(q, mask);
                                    if five {
                                        let qh = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                            blk.add(16 + 8 * e) as *const __m128i,
                                        ));
                                        let bit = _mm_cvtsi32_si128(sub as i32);
                                        let h = _mm256_and_si256(_mm256_srl_epi32(qh, bit), one);
                                        q = _mm256_or_si256(q, _mm256_slli_epi32::<4>(h));
                                    }
                                    let q = _mm256_cvtepi32_ps(q);
                                    wv[r] = _mm256_sub_ps(
                                        _mm256_mul_ps(_mm256_set1_ps(ds[r][sub]), q),
                                        _mm256_set1_ps(ms[r][sub]),
                                    );
                                }
                                let i = b * QK_K + 64 * chunk + L * part;
                                madd_rows(&mut acc, &wv, &xp, i);
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                IQ4_NLF | IQ4_XSF => {
                    // As the AVX-512 loop in quarters of 32 weights: eight lanes look up each
                    // half of the table and keep the one their index falls in.
                    let (bytes, per, xs) = iq4_layout(F);
                    let (lo, hi) = (
                        _mm256_loadu_ps(IQ4_TABLE.as_ptr()),
                        _mm256_loadu_ps(IQ4_TABLE.as_ptr().add(8)),
                    );
                    let (mask, seven) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(7));
                    for b in 0..k / per {
                        let mut dl = [[0f32; 8]; R];
                        for r in 0..R {
                            dl[r] = iq4_scales(xs, wp[r].add(b * bytes));
                        }
                        #[allow(clippy::needless_range_loop)] // `sub` also places the weights
                        for sub in 0..per / BLOCK {
                            let at = if xs { 8 + 16 * sub } else { 2 };
                            let mut v = [[_mm256_setzero_si256(); 2]; R];
                            for r in 0..R {
                                for (e, v) in v[r].iter_mut().enumerate() {
                                    *v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                        wp[r].add(b * bytes + at + 8 * e) as *const __m128i,
                                    ));
                                }
                            }
                            for quarter in 0..4 {
                                let mut wv = [_mm256_setzero_ps(); R];
                                for r in 0..R {
                                    let q = v[r][quarter % 2];
                                    let q = if quarter < 2 {
                                        q
                                    } else {
                                        _mm256_srli_epi32::<4>(q)
                                    };
                                    let idx = _mm256_and_si256(q, mask);
                                    let high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven));
                                    let val = _mm256_blendv_ps(
                                        _mm256_permutevar8x32_ps(lo, idx),
                                        _mm256_permutevar8x32_ps(hi, idx),
                                        high,
                                    );
                                    wv[r] = _mm256_mul_ps(_mm256_set1_ps(dl[r][sub]), val);
                                }
                                madd_rows(&mut acc, &wv, &xp, b * per + BLOCK * sub + L * quarter);
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q2_KF => {
                    // As the AVX-512 loop, eight weights at a time.
                    let pair = _mm256_set1_epi32(3);
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 16]; R];
                        let mut ms = [[0f32; 16]; R];
                        for r in 0..R {
                            let blk = std::slice::from_raw_parts(wp[r].add(b * Q2_K_BYTES), 84);
                            (ds[r], ms[r]) = crate::quant::q2_k_scales(blk);
                        }
                        for g in 0..16 {
                            let (half, j, s) = (g / 8, g % 8 / 2, g % 2);
                            let qs = _mm_cvtsi32_si128(2 * j as i32);
                            for e in 0..2 {
                                let mut wv = [_mm256_setzero_ps(); R];
                                for r in 0..R {
                                    let blk = wp[r].add(b * Q2_K_BYTES);
                                    let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                        blk.add(16 + 32 * half + 16 * s + 8 * e) as *const _,
                                    ));
                                    let q = _mm256_and_si256(_mm256_srl_epi32(q, qs), pair);
                                    let at = 8 * half + 2 * j + s;
                                    wv[r] = _mm256_sub_ps(
                                        _mm256_mul_ps(
                                            _mm256_set1_ps(ds[r][at]),
                                            _mm256_cvtepi32_ps(q),
                                        ),
                                        _mm256_set1_ps(ms[r][at]),
                                    );
                                }
                                madd_rows(&mut acc, &wv, &xp, b * QK_K + 16 * g + L * e);
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q3_KF => {
                    // As the AVX-512 loop, eight weights at a time.
                    let (pair, one, four) = (
                        _mm256_set1_epi32(3),
                        _mm256_set1_epi32(1),
                        _mm256_set1_epi32(4),
                    );
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 16]; R];
                        for r in 0..R {
                            let blk = std::slice::from_raw_parts(wp[r].add(b * Q3_K_BYTES), 110);
                            ds[r] = crate::quant::q3_k_scales(blk);
                        }
                        for g in 0..16 {
                            let (half, j, s) = (g / 8, g % 8 / 2, g % 2);
                            for e in 0..2 {
                                let mut wv = [_mm256_setzero_ps(); R];
                                for r in 0..R {
                                    let blk = wp[r].add(b * Q3_K_BYTES);
                                    let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                        blk.add(32 + 32 * half + 16 * s + 8 * e) as *const _,
                                    ));
                                    let h = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                        blk.add(16 * s + 8 * e) as *const _,
                                    ));
                                    let q = _mm256_and_si256(
                                        _mm256_srl_epi32(q, _mm_cvtsi32_si128(2 * j as i32)),
                                        pair,
                                    );
                                    let h = _mm256_and_si256(
                                        _mm256_srl_epi32(
                                            h,
                                            _mm_cvtsi32_si128((4 * half + j) as i32),
                                        ),
                                        one,
                                    );
                                    let v = _mm256_sub_epi32(
                                        _mm256_add_epi32(q, _mm256_slli_epi32::<2>(h)),
                                        four,
                                    );
                                    wv[r] = _mm256_mul_ps(
                                        _mm256_set1_ps(ds[r][8 * half + 2 * j + s]),
                                        _mm256_cvtepi32_ps(v),
                                    );
                                }
                                madd_rows(&mut acc, &wv, &xp, b * QK_K + 16 * g + L * e);
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                Q6_KF => {
                    // As the AVX-512 loop, eight weights at a time.
                    let (low, pair) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(3));
                    let thirty_two = _mm256_set1_epi32(32);
                    for b in 0..k / QK_K {
                        let mut ds = [[0f32; 16]; R];
                        for r in 0..R {
                            let blk = std::slice::from_raw_parts(wp[r].add(b * Q6_K_BYTES), 210);
                            ds[r] = crate::quant::q6_k_scales(blk);
                        }
                        for half in 0..2 {
                            for g in 0..4 {
                                for eight in 0..4 {
                                    let mut wv = [_mm256_setzero_ps(); R];
                                    for r in 0..R {
                                        let blk = wp[r].add(b * Q6_K_BYTES);
                                        let ql = blk.add(64 * half + 32 * (g % 2) + 8 * eight);
                                        let qh = blk.add(128 + 32 * half + 8 * eight);
                                        let ql =
                                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(ql as *const _));
                                        let qh =
                                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(qh as *const _));
                                        let nib = if g < 2 {
                                            ql
                                        } else {
                                            _mm256_srli_epi32::<4>(ql)
                                        };
                                        let shift = _mm_cvtsi32_si128(2 * g as i32);
                                        let hb =
                                            _mm256_and_si256(_mm256_srl_epi32(qh, shift), pair);
                                        let q = _mm256_sub_epi32(
                                            _mm256_or_si256(
                                                _mm256_and_si256(nib, low),
                                                _mm256_slli_epi32::<4>(hb),
                                            ),
                                            thirty_two,
                                        );
                                        let sc = ds[r][8 * half + eight / 2 + 2 * g];
                                        wv[r] = _mm256_mul_ps(
                                            _mm256_set1_ps(sc),
                                            _mm256_cvtepi32_ps(q),
                                        );
                                    }
                                    let i = b * QK_K + 128 * half + 32 * g + L * eight;
                                    madd_rows(&mut acc, &wv, &xp, i);
                                }
                            }
                        }
                    }
                    sums::<R, C>(&acc)
                }
                _ => {
                    let full = k / L * L;
                    let mut i = 0;
                    while i < full {
                        let mut wv = [_mm256_setzero_ps(); R];
                        for r in 0..R {
                            wv[r] = load_dense::<F>(wp[r], i);
                        }
                        madd_rows(&mut acc, &wv, &xp, i);
                        i += L;
                    }
                    let mut sums = sums::<R, C>(&acc);
                    if full < k {
                        for (r, row_sums) in sums.iter_mut().enumerate() {
                            let row = std::slice::from_raw_parts(wp[r], rb);
                            for (c, s) in row_sums.iter_mut().enumerate() {
                                for j in full..k {
                                    *s += dense_at(format, row, j) * *xp[c].add(j);
                                }
                            }
                        }
                    }
                    sums
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        n: usize,
        f: &[f32],
        q: &[i16],
        s: &[f32],
        m: usize,
        k: usize,
        out: Out,
    ) {
        let x = View { f, q, s };
        unsafe {
            if m == 1 {
                // A decode step: one weight row after the other (see `avx512::rows`).
                // SAFETY: with one activation row the task's outputs are `n` contiguous values.
                let o = std::slice::from_raw_parts_mut(out.ptr, n);
                match format {
                    WeightFormat::F32 => row_by_row!(tile, F32, format, w, rb, x, k, o),
                    WeightFormat::Bf16 => row_by_row!(tile, BF16, format, w, rb, x, k, o),
                    WeightFormat::F16 => row_by_row!(tile, F16, format, w, rb, x, k, o),
                    WeightFormat::Q4_1 => row_by_row!(tile, Q4_1F, format, w, rb, x, k, o),
                    WeightFormat::Q5_0 => row_by_row!(tile, Q5_0F, format, w, rb, x, k, o),
                    WeightFormat::Q5_1 => row_by_row!(tile, Q5_1F, format, w, rb, x, k, o),
                    WeightFormat::Q2K => row_by_row!(tile, Q2_KF, format, w, rb, x, k, o),
                    WeightFormat::Iq4Nl => row_by_row!(tile, IQ4_NLF, format, w, rb, x, k, o),
                    WeightFormat::Iq4Xs => row_by_row!(tile, IQ4_XSF, format, w, rb, x, k, o),
                    WeightFormat::Q3K => row_by_row!(tile, Q3_KF, format, w, rb, x, k, o),
                    WeightFormat::Q4K => row_by_row!(tile, Q4_KF, format, w, rb, x, k, o),
                    WeightFormat::Q5K => row_by_row!(tile, Q5_KF, format, w, rb, x, k, o),
                    WeightFormat::Q6K => row_by_row!(tile, Q6_KF, format, w, rb, x, k, o),
                    _ => row_by_row!(tile, QUANT, format, w, rb, x, k, o),
                }
            } else {
                match format {
                    WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                        drive!(tile, QUANT, 1, 4, format, w, rb, n, x, m, k, out)
                    }
                    // 2 x 4 tiles: 8 accumulators in the 16 registers.
                    WeightFormat::F32 => drive!(tile, F32, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Bf16 => drive!(tile, BF16, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::F16 => drive!(tile, F16, 2, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q4_1 => drive!(tile, Q4_1F, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q5_0 => drive!(tile, Q5_0F, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q5_1 => drive!(tile, Q5_1F, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q2K => drive!(tile, Q2_KF, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Iq4Nl => {
                        drive!(tile, IQ4_NLF, 1, 4, format, w, rb, n, x, m, k, out)
                    }
                    WeightFormat::Iq4Xs => {
                        drive!(tile, IQ4_XSF, 1, 4, format, w, rb, n, x, m, k, out)
                    }
                    WeightFormat::Q3K => drive!(tile, Q3_KF, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q4K => drive!(tile, Q4_KF, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q5K => drive!(tile, Q5_KF, 1, 4, format, w, rb, n, x, m, k, out),
                    WeightFormat::Q6K => drive!(tile, Q6_KF, 1, 4, format, w, rb, n, x, m, k, out),
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    /// Values over 40 binades with both signs, so any other order of additions shows.
    fn wild(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let m = (*seed >> 40) as f32 / (1u64 << 24) as f32 + 0.5;
        let e = ((*seed >> 8) % 40) as i32 - 20;
        let sign = if *seed & 1 == 1 { -1.0 } else { 1.0 };
        sign * m * 2f32.powi(e)
    }

    #[test]
    fn batched_reductions_have_the_bits_of_single_ones() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        if super::Isa::available().contains(&super::Isa::Avx512) {
            for _ in 0..2000 {
                let vals: Vec<f32> = (0..256).map(|_| wild(&mut seed)).collect();
                // SAFETY: AVX-512 is present.
                unsafe {
                    let v: [__m512; 16] =
                        std::array::from_fn(|i| _mm512_loadu_ps(vals[16 * i..].as_ptr()));
                    let lanes = super::avx512::reduce16(&v);
                    for (i, v) in v.iter().enumerate() {
                        let one = _mm512_reduce_add_ps(*v);
                        assert_eq!(lanes[4 * (i % 4) + i / 4].to_bits(), one.to_bits());
                    }
                }
            }
        }
        if super::Isa::available().contains(&super::Isa::Avx2) {
            for _ in 0..2000 {
                let vals: Vec<f32> = (0..64).map(|_| wild(&mut seed)).collect();
                // SAFETY: AVX2 is present.
                unsafe {
                    let v: [__m256; 8] =
                        std::array::from_fn(|i| _mm256_loadu_ps(vals[8 * i..].as_ptr()));
                    let lanes = super::avx2::reduce8(&v);
                    for (i, v) in v.iter().enumerate() {
                        let one = super::avx2::hsum(*v);
                        assert_eq!(lanes[4 * (i % 2) + i / 2].to_bits(), one.to_bits());
                    }
                }
            }
        }
    }
}
