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
use crate::quant::{BLOCK, Q4_0_BYTES, Q8_0_BYTES};

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

/// `out[r * m + c] = dot(row r of w, row c of x)` for `n` weight rows of `k` columns stored
/// contiguously in `w` (`row_bytes` each) and `m` activation rows of `k` values in `x`.
///
/// `isa` must be one of [`Isa::available`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_dot(
    isa: Isa,
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    n: usize,
    x: &[f32],
    m: usize,
    k: usize,
    out: &mut [f32],
) {
    debug_assert!(w.len() >= n * row_bytes && x.len() >= m * k && out.len() >= n * m);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced by `available()` when the CPU has the features.
        Isa::Avx512 => unsafe { avx512::rows(format, w, row_bytes, n, x, m, k, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above for AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { avx2::rows(format, w, row_bytes, n, x, m, k, out) },
        _ => portable::rows(format, w, row_bytes, n, x, m, k, out),
    }
}

/// Runs `tile::<RT, CT>` over the `n x m` outputs: with at least `CT` activation rows (a batch
/// or a prefill, compute-bound), `RT` weight rows at a time so each activation load feeds `RT`
/// multiply-adds; a single activation row (a decode step, bandwidth-bound) walks one weight row
/// at a time, the one sequential stream the prefetchers follow. Edges use single rows. Every
/// output is one accumulator chain over the same columns in the same order whatever the tile, so
/// the tiling never changes a bit.
macro_rules! drive {
    ($tile:ident, $rt:expr, $ct:literal, $fmt:expr, $w:expr, $rb:expr, $n:expr, $x:expr, $m:expr, $k:expr, $out:expr) => {{
        let (w, rb, n, x, m, k, out) = ($w, $rb, $n, $x, $m, $k, $out);
        let mut r = 0;
        if m >= $ct {
            while r + $rt <= n {
                let mut c = 0;
                while c + $ct <= m {
                    $tile::<$rt, $ct>($fmt, w, rb, r, x, k, c, m, out);
                    c += $ct;
                }
                while c < m {
                    $tile::<$rt, 1>($fmt, w, rb, r, x, k, c, m, out);
                    c += 1;
                }
                r += $rt;
            }
        }
        while r < n {
            let mut c = 0;
            while c + $ct <= m {
                $tile::<1, $ct>($fmt, w, rb, r, x, k, c, m, out);
                c += $ct;
            }
            while c < m {
                $tile::<1, 1>($fmt, w, rb, r, x, k, c, m, out);
                c += 1;
            }
            r += 1;
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

mod portable {
    use super::*;

    /// Partial sums per output, like the vector paths.
    const L: usize = 8;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        n: usize,
        x: &[f32],
        m: usize,
        k: usize,
        out: &mut [f32],
    ) {
        let mut wrow = vec![0f32; k];
        for r in 0..n {
            let row = &w[r * rb..(r + 1) * rb];
            crate::matrix::decode_row(format, row, &mut wrow);
            for c in 0..m {
                let xr = &x[c * k..(c + 1) * k];
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
                out[r * m + c] = s;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    const L: usize = 16;

    /// The f16 block scale at the start of the block at `p`, broadcast. Converted from an
    /// 8-byte load (the scale and the first quants; a block has at least 18 bytes), so the
    /// conversion depends on nothing but memory: building the scale through a register insert
    /// tied it to the accumulator and serialised the loop.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> __m512 {
        unsafe { _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))) }
    }

    #[inline(always)]
    unsafe fn load_dense(format: WeightFormat, p: *const u8, i: usize) -> __m512 {
        unsafe {
            match format {
                WeightFormat::F32 => _mm512_loadu_ps(p.add(4 * i) as *const f32),
                WeightFormat::Bf16 => {
                    let h = _mm256_loadu_si256(p.add(2 * i) as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                }
                _ => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i)),
            }
        }
    }

    /// Adds block `b` of every weight row times the activations to `acc` (Q8_0 or Q4_0).
    #[inline(always)]
    unsafe fn qblock<const R: usize, const C: usize>(
        format: WeightFormat,
        wp: &[*const u8; R],
        xp: &[*const f32; C],
        b: usize,
        acc: &mut [[__m512; C]; R],
    ) {
        unsafe {
            let q8 = format == WeightFormat::Q8_0;
            let bytes = if q8 { Q8_0_BYTES } else { Q4_0_BYTES };
            let table = _mm512_setr_ps(
                -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0,
                7.0,
            );
            let mut d = [_mm512_setzero_ps(); R];
            let mut q0 = [_mm512_setzero_ps(); R];
            let mut q1 = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let blk = wp[r].add(b * bytes);
                d[r] = scale(blk);
                let v = _mm_loadu_si128(blk.add(2) as *const __m128i);
                if q8 {
                    let v1 = _mm_loadu_si128(blk.add(18) as *const __m128i);
                    q0[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
                    q1[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v1));
                } else {
                    // A nibble indexes a 16-entry table of `nibble - 8` as f32: the permute
                    // reads only the low 4 bits of each lane, so no mask, subtraction or
                    // conversion (the same exact values).
                    let u = _mm512_cvtepu8_epi32(v);
                    q0[r] = _mm512_permutexvar_ps(u, table);
                    q1[r] = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(u), table);
                }
            }
            for c in 0..C {
                let x0 = _mm512_loadu_ps(xp[c].add(b * BLOCK));
                let x1 = _mm512_loadu_ps(xp[c].add(b * BLOCK + L));
                for r in 0..R {
                    let s = _mm512_fmadd_ps(q1[r], x1, _mm512_mul_ps(q0[r], x0));
                    acc[r][c] = _mm512_fmadd_ps(d[r], s, acc[r][c]);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        r0: usize,
        x: &[f32],
        k: usize,
        c0: usize,
        m: usize,
        out: &mut [f32],
    ) {
        unsafe {
            let wp: [*const u8; R] = std::array::from_fn(|r| w.as_ptr().add((r0 + r) * rb));
            let xp: [*const f32; C] = std::array::from_fn(|c| x.as_ptr().add((c0 + c) * k));
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            match format {
                WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                    // Even blocks into `acc`, odd ones into `odd`: two independent chains of
                    // scale multiply-adds (one chain waited on the FMA latency every block).
                    let mut odd = [[_mm512_setzero_ps(); C]; R];
                    let nb = k / BLOCK;
                    let mut b = 0;
                    while b + 2 <= nb {
                        qblock::<R, C>(format, &wp, &xp, b, &mut acc);
                        qblock::<R, C>(format, &wp, &xp, b + 1, &mut odd);
                        b += 2;
                    }
                    if b < nb {
                        qblock::<R, C>(format, &wp, &xp, b, &mut acc);
                    }
                    for r in 0..R {
                        for c in 0..C {
                            acc[r][c] = _mm512_add_ps(acc[r][c], odd[r][c]);
                        }
                    }
                    for r in 0..R {
                        for c in 0..C {
                            out[(r0 + r) * m + c0 + c] = _mm512_reduce_add_ps(acc[r][c]);
                        }
                    }
                }
                _ => {
                    let full = k / L * L;
                    let mut i = 0;
                    while i < full {
                        let mut wv = [_mm512_setzero_ps(); R];
                        for r in 0..R {
                            wv[r] = load_dense(format, wp[r], i);
                        }
                        for c in 0..C {
                            let xv = _mm512_loadu_ps(xp[c].add(i));
                            for r in 0..R {
                                acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
                            }
                        }
                        i += L;
                    }
                    for r in 0..R {
                        let row = std::slice::from_raw_parts(wp[r], rb);
                        for c in 0..C {
                            let mut s = _mm512_reduce_add_ps(acc[r][c]);
                            for j in full..k {
                                s += dense_at(format, row, j) * *xp[c].add(j);
                            }
                            out[(r0 + r) * m + c0 + c] = s;
                        }
                    }
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
        x: &[f32],
        m: usize,
        k: usize,
        out: &mut [f32],
    ) {
        unsafe {
            if matches!(format, WeightFormat::Q8_0 | WeightFormat::Q4_0) {
                // Two accumulators per output: 2 x 4 tiles fit the 32 registers.
                drive!(tile, 2, 4, format, w, rb, n, x, m, k, out)
            } else {
                drive!(tile, 4, 4, format, w, rb, n, x, m, k, out)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    const L: usize = 8;

    /// The f16 block scale at the start of the block at `p`, broadcast. Converted from an
    /// 8-byte load (the scale and the first quants; a block has at least 18 bytes), so the
    /// conversion depends on nothing but memory: building the scale through a register insert
    /// tied it to the accumulator and serialised the loop.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> __m256 {
        unsafe { _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))) }
    }

    #[inline(always)]
    unsafe fn load_dense(format: WeightFormat, p: *const u8, i: usize) -> __m256 {
        unsafe {
            match format {
                WeightFormat::F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
                WeightFormat::Bf16 => {
                    let h = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                }
                _ => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    #[inline(always)]
    unsafe fn i8x8_reg(v: __m128i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)) }
    }

    #[inline(always)]
    unsafe fn i8x8(p: *const u8) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
    }

    /// Adds block `b` of every weight row times the activations to `acc` (Q8_0 or Q4_0).
    #[inline(always)]
    unsafe fn qblock<const R: usize, const C: usize>(
        format: WeightFormat,
        wp: &[*const u8; R],
        xp: &[*const f32; C],
        b: usize,
        acc: &mut [[__m256; C]; R],
    ) {
        unsafe {
            let q8 = format == WeightFormat::Q8_0;
            let bytes = if q8 { Q8_0_BYTES } else { Q4_0_BYTES };
            let low = _mm_set1_epi8(0x0F);
            let eight = _mm_set1_epi8(8);
            let mut d = [_mm256_setzero_ps(); R];
            let mut q = [[_mm256_setzero_ps(); 4]; R];
            for r in 0..R {
                let blk = wp[r].add(b * bytes);
                d[r] = scale(blk);
                if q8 {
                    for (h, qh) in q[r].iter_mut().enumerate() {
                        *qh = i8x8(blk.add(2 + 8 * h));
                    }
                } else {
                    let v = _mm_loadu_si128(blk.add(2) as *const __m128i);
                    let lo = _mm_sub_epi8(_mm_and_si128(v, low), eight);
                    let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16::<4>(v), low), eight);
                    q[r][0] = i8x8_reg(lo);
                    q[r][1] = i8x8_reg(_mm_srli_si128::<8>(lo));
                    q[r][2] = i8x8_reg(hi);
                    q[r][3] = i8x8_reg(_mm_srli_si128::<8>(hi));
                }
            }
            for c in 0..C {
                let xb = xp[c].add(b * BLOCK);
                let mut xv = [_mm256_setzero_ps(); 4];
                for (h, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xb.add(8 * h));
                }
                for r in 0..R {
                    let mut s = _mm256_mul_ps(q[r][0], xv[0]);
                    s = _mm256_fmadd_ps(q[r][1], xv[1], s);
                    s = _mm256_fmadd_ps(q[r][2], xv[2], s);
                    s = _mm256_fmadd_ps(q[r][3], xv[3], s);
                    acc[r][c] = _mm256_fmadd_ps(d[r], s, acc[r][c]);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        format: WeightFormat,
        w: &[u8],
        rb: usize,
        r0: usize,
        x: &[f32],
        k: usize,
        c0: usize,
        m: usize,
        out: &mut [f32],
    ) {
        unsafe {
            let wp: [*const u8; R] = std::array::from_fn(|r| w.as_ptr().add((r0 + r) * rb));
            let xp: [*const f32; C] = std::array::from_fn(|c| x.as_ptr().add((c0 + c) * k));
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            match format {
                WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                    // Even blocks into `acc`, odd ones into `odd`: two independent chains of
                    // scale multiply-adds (one chain waited on the FMA latency every block).
                    let mut odd = [[_mm256_setzero_ps(); C]; R];
                    let nb = k / BLOCK;
                    let mut b = 0;
                    while b + 2 <= nb {
                        qblock::<R, C>(format, &wp, &xp, b, &mut acc);
                        qblock::<R, C>(format, &wp, &xp, b + 1, &mut odd);
                        b += 2;
                    }
                    if b < nb {
                        qblock::<R, C>(format, &wp, &xp, b, &mut acc);
                    }
                    for r in 0..R {
                        for c in 0..C {
                            acc[r][c] = _mm256_add_ps(acc[r][c], odd[r][c]);
                        }
                    }
                    for r in 0..R {
                        for c in 0..C {
                            out[(r0 + r) * m + c0 + c] = hsum(acc[r][c]);
                        }
                    }
                }
                _ => {
                    let full = k / L * L;
                    let mut i = 0;
                    while i < full {
                        let mut wv = [_mm256_setzero_ps(); R];
                        for r in 0..R {
                            wv[r] = load_dense(format, wp[r], i);
                        }
                        for c in 0..C {
                            let xv = _mm256_loadu_ps(xp[c].add(i));
                            for r in 0..R {
                                acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
                            }
                        }
                        i += L;
                    }
                    for r in 0..R {
                        let row = std::slice::from_raw_parts(wp[r], rb);
                        for c in 0..C {
                            let mut s = hsum(acc[r][c]);
                            for j in full..k {
                                s += dense_at(format, row, j) * *xp[c].add(j);
                            }
                            out[(r0 + r) * m + c0 + c] = s;
                        }
                    }
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
        x: &[f32],
        m: usize,
        k: usize,
        out: &mut [f32],
    ) {
        unsafe {
            if matches!(format, WeightFormat::Q8_0 | WeightFormat::Q4_0) {
                drive!(tile, 1, 4, format, w, rb, n, x, m, k, out)
            } else {
                // 2 x 4 tiles: 8 accumulators in the 16 registers.
                drive!(tile, 2, 4, format, w, rb, n, x, m, k, out)
            }
        }
    }
}
