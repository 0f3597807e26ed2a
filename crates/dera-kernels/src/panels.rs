//! Weights packed in row panels for compute-bound products (weights that stay in cache).
//!
//! [`crate::HostMatrix`]'s rows suit a memory-bound decode step: one dot product per weight row,
//! each row read once in its stored format. When the weights stay in cache, a batched step is
//! compute-bound instead, and a dot product pays for its horizontal sums (a quarter of the
//! kernel at `k = 128`). [`Panels`] holds the same values in the same format (f32, bf16 or f16,
//! each read as `f32` exactly) in panels of 16 weight rows, `[panel][col][16]`: a product
//! broadcasts one activation and multiply-adds it into 16 outputs at once, with no horizontal
//! sums. (Panels widened to `f32` were faster with the matrix in L2 but slower in the engine,
//! where a small model's matrices stream from L3 at twice the bytes.)
//!
//! Every output is one chain of fused multiply-adds over the columns in order,
//! `acc = fma(x[j], w[j], acc)` from `acc = 0`, whatever the tile, the batch, the thread split
//! or the instruction set (AVX-512, AVX2 and the portable `f32::mul_add` round identically), so
//! a row gets the same bits alone or in a batch, at any thread count, on any CPU.

use std::sync::Arc;

use crate::WeightFormat;
use crate::simd::{Isa, Out};

/// Weight rows per panel (one AVX-512 register of outputs).
pub(crate) const PANEL: usize = 16;

/// A `[rows, cols]` matrix in panels of [`PANEL`] rows, `[panel][col][PANEL]`, each value in
/// the matrix's float format (f32, bf16 or f16: read as `f32` exactly); the last panel is
/// padded with zero rows.
#[derive(Debug, Clone)]
pub(crate) struct Panels {
    format: WeightFormat,
    data: Arc<[u8]>,
}

impl Panels {
    /// Packs `rows` rows of `cols` values of a float `format`, row `r`'s stored bytes given by
    /// `row(r)`; `None` for block formats.
    pub(crate) fn pack<'a>(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> Option<Self> {
        let size = match format {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 | WeightFormat::F16 => 2,
            _ => return None,
        };
        let np = rows.div_ceil(PANEL);
        let mut data = vec![0u8; np * cols * PANEL * size];
        for r in 0..rows {
            let (p, lane) = (r / PANEL, r % PANEL);
            let panel = &mut data[p * cols * PANEL * size..(p + 1) * cols * PANEL * size];
            for (j, v) in row(r).chunks_exact(size).enumerate() {
                let at = (j * PANEL + lane) * size;
                panel[at..at + size].copy_from_slice(v);
            }
        }
        Some(Self {
            format,
            data: data.into(),
        })
    }

    /// Bytes held.
    pub(crate) fn byte_len(&self) -> usize {
        self.data.len()
    }
}

/// `out(r, c) = sum_j x[c][j] * w[r][j]` for the weight rows `r0 .. r0 + rows` of `p` (`r0` a
/// multiple of [`PANEL`]) and the `m` activation rows of `x` (`[m, k]`), output `r` of the task
/// at `out` column `r - r0`.
///
/// # Safety
/// `out` holds outputs `(r - r0, c)` for every `r` of the task and `c < m`, no other thread
/// writes them, `x.len() >= m * k`, `p` was packed with `k` columns and at least `r0 + rows`
/// rows, and `isa` is one of [`Isa::available`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    isa: Isa,
    p: &Panels,
    k: usize,
    r0: usize,
    rows: usize,
    x: &[f32],
    m: usize,
    out: Out,
) {
    debug_assert!(r0.is_multiple_of(PANEL) && x.len() >= m * k);
    let (first, np) = (r0 / PANEL, rows.div_ceil(PANEL));
    let size = if p.format == WeightFormat::F32 { 4 } else { 2 };
    debug_assert!(p.data.len() >= (first + np) * k * PANEL * size);
    let w = &p.data[first * k * PANEL * size..(first + np) * k * PANEL * size];
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced when the CPU has the features; the rest as
        // for this function.
        Isa::Avx512 => unsafe {
            match p.format {
                WeightFormat::F32 => avx512::run::<F32>(w, np, k, x, m, rows, out),
                WeightFormat::Bf16 => avx512::run::<BF16>(w, np, k, x, m, rows, out),
                _ => avx512::run::<F16>(w, np, k, x, m, rows, out),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above for AVX2, FMA and F16C.
        Isa::Avx2 => unsafe {
            match p.format {
                WeightFormat::F32 => avx2::run::<F32>(w, np, k, x, m, rows, out),
                WeightFormat::Bf16 => avx2::run::<BF16>(w, np, k, x, m, rows, out),
                _ => avx2::run::<F16>(w, np, k, x, m, rows, out),
            }
        },
        // SAFETY: as for this function.
        _ => unsafe { portable(p.format, w, np, k, x, m, rows, out) },
    }
}

/// The panel formats, as const parameters of the kernels (one compiled loop per format).
const F32: u8 = 0;
const BF16: u8 = 1;
const F16: u8 = 2;

/// The plain loop: one fused multiply-add chain per output, as the vector paths.
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable(
    format: WeightFormat,
    w: &[u8],
    np: usize,
    k: usize,
    x: &[f32],
    m: usize,
    rows: usize,
    out: Out,
) {
    let size = if format == WeightFormat::F32 { 4 } else { 2 };
    let mut panel = vec![0f32; k * PANEL];
    for p in 0..np {
        crate::matrix::decode_row(
            format,
            &w[p * k * PANEL * size..(p + 1) * k * PANEL * size],
            &mut panel,
        );
        for c in 0..m {
            let xr = &x[c * k..(c + 1) * k];
            let mut acc = [0f32; PANEL];
            for (j, &xv) in xr.iter().enumerate() {
                for (a, &wv) in acc.iter_mut().zip(&panel[j * PANEL..(j + 1) * PANEL]) {
                    *a = xv.mul_add(wv, *a);
                }
            }
            for (l, &a) in acc.iter().enumerate().take(rows.saturating_sub(p * PANEL)) {
                // SAFETY: output `(p * PANEL + l, c)` is the task's (as for this function).
                unsafe { out.put(p * PANEL + l, c, a) };
            }
        }
    }
}

/// Runs `$tile::<C, P>` over `np` panels and `m` activation rows: panels in groups (eight for
/// one or two activation rows, enough independent chains to hide the FMA latency; four for
/// more), and within a group every activation row, `$wide` rows at a time (8 with AVX-512's 32
/// registers, 4 with AVX2's 16) and the rest as one narrower tile, so a group's weights are
/// read from memory once per product and then from L1.
#[cfg(target_arch = "x86_64")]
macro_rules! drive_panels {
    ($tile:ident, $f:ident, $wide:expr, $w:expr, $np:expr, $k:expr, $x:expr, $m:expr, $rows:expr, $out:expr) => {{
        let (w, np, k, x, m, rows, out) = ($w, $np, $k, $x, $m, $rows, $out);
        let group = if m <= 2 { 8 } else { 4 };
        let mut p = 0;
        while p < np {
            let end = (p + group).min(np);
            let mut c = 0;
            while c < m {
                let cw = (m - c).min($wide);
                let mut q = p;
                while q < end {
                    let args = (w, q, k, x, c, rows, out);
                    q += match (cw, end - q) {
                        (1, 8..) => $tile::<1, 8, $f>(args),
                        (1, 4..) => $tile::<1, 4, $f>(args),
                        (1, 2..) => $tile::<1, 2, $f>(args),
                        (1, _) => $tile::<1, 1, $f>(args),
                        (2, 4..) => $tile::<2, 4, $f>(args),
                        (2, 2..) => $tile::<2, 2, $f>(args),
                        (2, _) => $tile::<2, 1, $f>(args),
                        (3, 4..) => $tile::<3, 4, $f>(args),
                        (3, 2..) => $tile::<3, 2, $f>(args),
                        (3, _) => $tile::<3, 1, $f>(args),
                        (4, 4..) => $tile::<4, 4, $f>(args),
                        (4, 2..) => $tile::<4, 2, $f>(args),
                        (4, _) => $tile::<4, 1, $f>(args),
                        (5, 2..) => $tile::<5, 2, $f>(args),
                        (5, _) => $tile::<5, 1, $f>(args),
                        (6, 2..) => $tile::<6, 2, $f>(args),
                        (6, _) => $tile::<6, 1, $f>(args),
                        (7, 2..) => $tile::<7, 2, $f>(args),
                        (7, _) => $tile::<7, 1, $f>(args),
                        (_, 2..) => $tile::<8, 2, $f>(args),
                        (_, _) => $tile::<8, 1, $f>(args),
                    };
                }
                c += cw;
            }
            p = end;
        }
    }};
}

/// A tile's arguments: panels, first panel of the tile, columns, activations, first activation
/// row, valid outputs of the task, outputs.
#[cfg(target_arch = "x86_64")]
type TileArgs<'a> = (&'a [u8], usize, usize, &'a [f32], usize, usize, Out);

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Activation rows per tile: 8 x 2 panels is 16 accumulators of the 32 registers.
    const WIDE: usize = 8;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn run<const F: u8>(
        w: &[u8],
        np: usize,
        k: usize,
        x: &[f32],
        m: usize,
        rows: usize,
        out: Out,
    ) {
        unsafe { drive_panels!(tile, F, WIDE, w, np, k, x, m, rows, out) }
    }

    /// 16 weights of format `F` at element `i` of `p`, as `f32` (exact).
    #[inline(always)]
    unsafe fn load<const F: u8>(p: *const u8, i: usize) -> __m512 {
        unsafe {
            match F {
                F32 => _mm512_loadu_ps(p.add(4 * i) as *const f32),
                BF16 => {
                    let h = _mm256_loadu_si256(p.add(2 * i) as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                }
                _ => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i)),
            }
        }
    }

    /// `C` activation rows times `P` panels, `C x P` registers of 16 outputs; returns `P`.
    #[inline(always)]
    unsafe fn tile<const C: usize, const P: usize, const F: u8>(
        (w, p0, k, x, c0, rows, out): TileArgs<'_>,
    ) -> usize {
        unsafe {
            let wp = w.as_ptr();
            let xp = x.as_ptr().add(c0 * k);
            let mut acc = [[_mm512_setzero_ps(); P]; C];
            for j in 0..k {
                let mut wv = [_mm512_setzero_ps(); P];
                for (q, v) in wv.iter_mut().enumerate() {
                    *v = load::<F>(wp, ((p0 + q) * k + j) * PANEL);
                }
                for (c, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xp.add(c * k + j));
                    for (a, &v) in acc.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xv, v, *a);
                    }
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                for (q, &a) in acc.iter().enumerate() {
                    let r = (p0 + q) * PANEL;
                    let dst = out.ptr.add((c0 + c) * out.stride + r);
                    if r + PANEL <= rows {
                        _mm512_storeu_ps(dst, a);
                    } else if r < rows {
                        let mask: __mmask16 = ((1u32 << (rows - r)) - 1) as __mmask16;
                        _mm512_mask_storeu_ps(dst, mask, a);
                    }
                }
            }
        }
        P
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Activation rows per tile (wider ones would not fit the 16 registers).
    const WIDE: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run<const F: u8>(
        w: &[u8],
        np: usize,
        k: usize,
        x: &[f32],
        m: usize,
        rows: usize,
        out: Out,
    ) {
        unsafe { drive_panels!(tile, F, WIDE, w, np, k, x, m, rows, out) }
    }

    /// 8 weights of format `F` at element `i` of `p`, as `f32` (exact).
    #[inline(always)]
    unsafe fn load<const F: u8>(p: *const u8, i: usize) -> __m256 {
        unsafe {
            match F {
                F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
                BF16 => {
                    let h = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                }
                _ => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            }
        }
    }

    /// `C` activation rows times `P` panels in halves of 8 lanes. Sixteen registers: at most
    /// eight accumulators (four panels for one row, two for two, one for more), so wider
    /// requests run as several narrower tiles; returns `P`.
    #[inline(always)]
    unsafe fn tile<const C: usize, const P: usize, const F: u8>(args: TileArgs<'_>) -> usize {
        unsafe {
            let (w, p0, k, x, c0, rows, out) = args;
            match C {
                1 => {
                    let mut q = 0;
                    while q < P {
                        let a = (w, p0 + q, k, x, c0, rows, out);
                        q += match P - q {
                            4.. => half::<1, 4, F>(a),
                            2 | 3 => half::<1, 2, F>(a),
                            _ => half::<1, 1, F>(a),
                        };
                    }
                }
                2 => {
                    let mut q = 0;
                    while q < P {
                        let a = (w, p0 + q, k, x, c0, rows, out);
                        q += if P - q >= 2 {
                            half::<2, 2, F>(a)
                        } else {
                            half::<2, 1, F>(a)
                        };
                    }
                }
                3 => {
                    for q in 0..P {
                        half::<3, 1, F>((w, p0 + q, k, x, c0, rows, out));
                    }
                }
                _ => {
                    // Four rows (the driver gives at most `WIDE`); any `C` stays correct.
                    for q in 0..P {
                        half::<C, 1, F>((w, p0 + q, k, x, c0, rows, out));
                    }
                }
            }
        }
        P
    }

    /// `C` rows times `P` panels, each panel in two registers of 8 outputs; returns `P`.
    #[inline(always)]
    unsafe fn half<const C: usize, const P: usize, const F: u8>(
        (w, p0, k, x, c0, rows, out): TileArgs<'_>,
    ) -> usize {
        unsafe {
            let wp = w.as_ptr();
            let xp = x.as_ptr().add(c0 * k);
            let mut lo = [[_mm256_setzero_ps(); P]; C];
            let mut hi = [[_mm256_setzero_ps(); P]; C];
            for j in 0..k {
                let mut wl = [_mm256_setzero_ps(); P];
                let mut wh = [_mm256_setzero_ps(); P];
                for q in 0..P {
                    let at = ((p0 + q) * k + j) * PANEL;
                    wl[q] = load::<F>(wp, at);
                    wh[q] = load::<F>(wp, at + 8);
                }
                for c in 0..C {
                    let xv = _mm256_set1_ps(*xp.add(c * k + j));
                    for q in 0..P {
                        lo[c][q] = _mm256_fmadd_ps(xv, wl[q], lo[c][q]);
                        hi[c][q] = _mm256_fmadd_ps(xv, wh[q], hi[c][q]);
                    }
                }
            }
            for c in 0..C {
                for q in 0..P {
                    let r = (p0 + q) * PANEL;
                    let dst = out.ptr.add((c0 + c) * out.stride + r);
                    if r + PANEL <= rows {
                        _mm256_storeu_ps(dst, lo[c][q]);
                        _mm256_storeu_ps(dst.add(8), hi[c][q]);
                    } else if r < rows {
                        let mut v = [0f32; PANEL];
                        _mm256_storeu_ps(v.as_mut_ptr(), lo[c][q]);
                        _mm256_storeu_ps(v.as_mut_ptr().add(8), hi[c][q]);
                        for (l, &x) in v.iter().enumerate().take(rows - r) {
                            *dst.add(l) = x;
                        }
                    }
                }
            }
        }
        P
    }
}
