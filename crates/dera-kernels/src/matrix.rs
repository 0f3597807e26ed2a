//! Weight matrices kept as stored and the row-split product over the thread pool.

use half::{bf16, f16};

use crate::panels::{self, PANEL, Panels};
use crate::quant;
use crate::simd::{Acts, Isa, Out, rows_dot};
use crate::{Bytes, KernelError, WeightFormat};

/// A weight matrix `[rows, cols]`, row-major, in one [`WeightFormat`]; optionally also in
/// panels of 16 rows for compute-bound products ([`HostMatrix::with_panels`]).
#[derive(Debug, Clone)]
pub struct HostMatrix {
    rows: usize,
    cols: usize,
    format: WeightFormat,
    bytes: Bytes,
    panels: Option<Panels>,
}

impl HostMatrix {
    /// Wraps stored bytes (little-endian values or Q8_0/Q4_0/Q4_1 blocks), checking their
    /// length.
    pub fn from_bytes(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: Bytes,
    ) -> Result<Self, KernelError> {
        let expected = Self::byte_len(format, rows, cols)?;
        if bytes.len() != expected {
            return Err(KernelError::Size {
                format,
                rows,
                cols,
                expected,
                found: bytes.len(),
            });
        }
        Ok(Self {
            rows,
            cols,
            format,
            bytes,
            panels: None,
        })
    }

    /// The matrix, also held in panels of 16 rows (f32, bf16 and f16, in their own format;
    /// block formats are returned unchanged), which products then use: one fused multiply-add
    /// chain per output over the columns in order, one activation broadcast into 16 outputs at
    /// a time, with no horizontal sums (1.2-1.25x faster at 1 to 8 rows on one core, the
    /// matrix in cache). The bits differ from the row kernels' (another summation order) but
    /// are the same alone or in a batch, at any thread count and on every instruction set.
    /// Costs the matrix's bytes once more: for weights that stay in cache.
    pub fn with_panels(mut self) -> Self {
        if self.panels.is_none() && self.cols > 0 {
            let rb = self.row_bytes();
            let bytes = self.bytes.as_slice();
            self.panels = Panels::pack(self.format, self.rows, self.cols, |r| {
                &bytes[r * rb..(r + 1) * rb]
            });
        }
        self
    }

    /// Whether products use panels ([`HostMatrix::with_panels`]).
    pub fn has_panels(&self) -> bool {
        self.panels.is_some()
    }

    /// Bytes of the panels, 0 without them.
    pub fn panel_bytes(&self) -> usize {
        self.panels.as_ref().map_or(0, Panels::byte_len)
    }

    /// Converts `f32` values to `format`: bf16 and f16 round to nearest even, the block and
    /// K-quant formats quantize as llama.cpp's reference quantizers do (IQ4_NL and IQ4_XS:
    /// [`KernelError::NoQuantizer`]).
    pub fn from_f32(
        values: &[f32],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Self, KernelError> {
        let expected = Self::byte_len(format, rows, cols)?;
        if values.len() != rows * cols {
            return Err(KernelError::Size {
                format: WeightFormat::F32,
                rows,
                cols,
                expected: rows * cols * 4,
                found: values.len() * 4,
            });
        }
        let mut out = Vec::with_capacity(expected);
        match format {
            WeightFormat::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            WeightFormat::Bf16 => out.extend(
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()),
            ),
            WeightFormat::F16 => out.extend(
                values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()),
            ),
            WeightFormat::Q8_0 => quantize_rows(values, cols, &mut out, quant::quantize_q8_0),
            WeightFormat::Q4_0 => quantize_rows(values, cols, &mut out, quant::quantize_q4_0),
            WeightFormat::Q4_1 => quantize_rows(values, cols, &mut out, quant::quantize_q4_1),
            WeightFormat::Q5_0 => quantize_rows(values, cols, &mut out, quant::quantize_q5_0),
            WeightFormat::Q5_1 => quantize_rows(values, cols, &mut out, quant::quantize_q5_1),
            WeightFormat::Q2K => quantize_rows(values, cols, &mut out, quant::quantize_q2_k),
            WeightFormat::Iq4Nl | WeightFormat::Iq4Xs => {
                return Err(KernelError::NoQuantizer(format));
            }
            WeightFormat::Q3K => quantize_rows(values, cols, &mut out, quant::quantize_q3_k),
            WeightFormat::Q4K => quantize_rows(values, cols, &mut out, quant::quantize_q4_k),
            WeightFormat::Q5K => quantize_rows(values, cols, &mut out, quant::quantize_q5_k),
            WeightFormat::Q6K => quantize_rows(values, cols, &mut out, quant::quantize_q6_k),
        }
        Self::from_bytes(format, rows, cols, Bytes::Owned(out))
    }

    /// Bytes a `[rows, cols]` matrix takes in `format`.
    pub fn byte_len(format: WeightFormat, rows: usize, cols: usize) -> Result<usize, KernelError> {
        let row = format.row_bytes(cols).ok_or(if format.is_quantized() {
            KernelError::Blocks {
                format,
                block: format.block_len(),
                cols,
            }
        } else {
            KernelError::TooLarge { rows, cols }
        })?;
        row.checked_mul(rows)
            .ok_or(KernelError::TooLarge { rows, cols })
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.bytes.len() / self.rows.max(1)
    }

    /// Row `r` as `f32` (exact for f32/bf16/f16; the dequantized values for block formats).
    ///
    /// # Panics
    /// When `r >= rows` or `out.len() != cols`.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "row {r} out of range"
        );
        let rb = self.row_bytes();
        decode_row(
            self.format,
            &self.bytes.as_slice()[r * rb..(r + 1) * rb],
            out,
        );
    }

    /// The whole matrix as `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
                self.row_f32(r, o);
            }
        }
        out
    }

    /// Rows `ids` as `f32`, one after another (an embedding lookup).
    pub fn gather_f32(&self, ids: &[usize]) -> Result<Vec<f32>, KernelError> {
        if let Some(&bad) = ids.iter().find(|&&i| i >= self.rows) {
            return Err(KernelError::TooLarge {
                rows: bad,
                cols: self.cols,
            });
        }
        let mut out = vec![0f32; ids.len() * self.cols];
        if self.cols > 0 {
            for (&i, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
                self.row_f32(i, o);
            }
        }
        Ok(out)
    }
}

/// One stored row of `format` as `f32` values (exact for f32/bf16/f16, dequantized for blocks).
pub(crate) fn decode_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    match format {
        WeightFormat::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightFormat::Bf16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        WeightFormat::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        WeightFormat::Q8_0 => quant::dequantize_q8_0(row, out),
        WeightFormat::Q4_0 => quant::dequantize_q4_0(row, out),
        WeightFormat::Q4_1 => quant::dequantize_q4_1(row, out),
        WeightFormat::Q5_0 => quant::dequantize_q5_0(row, out),
        WeightFormat::Q5_1 => quant::dequantize_q5_1(row, out),
        WeightFormat::Q2K => quant::dequantize_q2_k(row, out),
        WeightFormat::Iq4Nl => quant::dequantize_iq4_nl(row, out),
        WeightFormat::Iq4Xs => quant::dequantize_iq4_xs(row, out),
        WeightFormat::Q3K => quant::dequantize_q3_k(row, out),
        WeightFormat::Q4K => quant::dequantize_q4_k(row, out),
        WeightFormat::Q5K => quant::dequantize_q5_k(row, out),
        WeightFormat::Q6K => quant::dequantize_q6_k(row, out),
    }
}

/// Multiply-adds from which a product is split over the pool: below it (a few microseconds on
/// one core) waking a second thread costs more than it saves.
const PARALLEL_FROM: usize = 1 << 15;

/// `y = x [W_1; W_2; ...]^T`: activations `x` `[m, k]` times the matrices stacked by rows
/// (all with `k` columns), returned `[m, sum of rows]` (the outputs side by side).
///
/// Weight rows are split over the rayon pool; each output is one dot product with `f32`
/// accumulation in the best instruction set of this CPU ([`Isa::detect`]).
pub fn matmul_t(x: &[f32], m: usize, mats: &[&HostMatrix]) -> Result<Vec<f32>, KernelError> {
    matmul_t_with(Isa::detect(), x, m, mats)
}

/// [`matmul_t`] with an explicit instruction set (one of [`Isa::available`]; others fall back
/// to the portable loop).
pub fn matmul_t_with(
    isa: Isa,
    x: &[f32],
    m: usize,
    mats: &[&HostMatrix],
) -> Result<Vec<f32>, KernelError> {
    let isa = if isa.runs_here() { isa } else { Isa::Portable };
    let k = mats.first().map_or(0, |w| w.cols);
    if let Some(other) = mats.iter().find(|w| w.cols != k) {
        return Err(KernelError::Stack {
            first: k,
            other: other.cols,
        });
    }
    if x.len() != m * k {
        return Err(KernelError::Activations {
            rows: m,
            cols: k,
            expected: m * k,
            found: x.len(),
        });
    }
    let n: usize = mats.iter().map(|w| w.rows).sum();
    // The result `[m, n]`, written in place: a task owns a run of weight rows, that is a run of
    // columns in every activation row.
    let mut out = vec![0f32; n * m];
    if n == 0 || m == 0 {
        return Ok(out);
    }
    let work = n.saturating_mul(k).saturating_mul(m);
    // Threads: one per `PARALLEL_FROM` multiply-adds, at most the pool's (a small product on a
    // many-core machine spent more waking helpers than computing). Rows per task: about four
    // tasks per thread for balance (claimed dynamically), in multiples of the 4-row tile.
    let threads = rayon::current_num_threads().clamp(1, (work / PARALLEL_FROM).max(1));
    let chunk = if threads == 1 {
        n
    } else {
        // Whole panels (16 rows), which are also whole 4-row tiles.
        n.div_ceil(threads * 4).next_multiple_of(PANEL)
    };
    // (matrix, its first row, rows, the first output column)
    let mut tasks: Vec<(&HostMatrix, usize, usize, usize)> = Vec::new();
    let mut col = 0;
    for w in mats {
        let mut r0 = 0;
        while r0 < w.rows {
            let rows = chunk.min(w.rows - r0);
            tasks.push((w, r0, rows, col + r0));
            r0 += rows;
        }
        col += w.rows;
    }
    // Integer block products (Q8_0, Q4_0) need the activations in 16-bit blocks, once per call.
    let int = isa != Isa::Portable
        && mats
            .iter()
            .any(|w| matches!(w.format, WeightFormat::Q8_0 | WeightFormat::Q4_0));
    let acts = if int {
        Acts::blocks16(x)
    } else {
        Acts::dense(x)
    };
    let x = &acts;
    let base = SharedOut(out.as_mut_ptr());
    let run = |(w, r0, rows, col): (&HostMatrix, usize, usize, usize)| {
        let out = Out {
            // SAFETY: `col + rows <= n`, so the view starts inside `out`.
            ptr: unsafe { base.get().add(col) },
            stride: n,
        };
        if let Some(p) = &w.panels {
            // SAFETY: as below; `r0` is a multiple of the panel height (the chunk is) and the
            // panels were packed from this matrix (`k` columns, `w.rows` rows).
            unsafe { panels::product(isa, p, k, r0, rows, x.f, m, out) };
            return;
        }
        let rb = w.row_bytes();
        let bytes = &w.bytes.as_slice()[r0 * rb..(r0 + rows) * rb];
        // SAFETY: the task's outputs (columns `col..col + rows` of the `m` rows of `out`) are
        // in the buffer, and the tasks' column runs are disjoint.
        unsafe { rows_dot(isa, w.format, bytes, rb, rows, x, m, k, out) };
    };
    crate::pool::for_each_within(tasks, threads, run);
    Ok(out)
}

/// The result buffer, shared by the tasks of one product (each writes its own outputs).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks write disjoint elements of a buffer that outlives the loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Quantizes each `cols`-long row of `values` with `quantize`, appending to `out` in row order;
/// spans of rows run on the thread pool (each row's bytes depend on that row alone, so the result
/// is the same on any number of threads).
fn quantize_rows(
    values: &[f32],
    cols: usize,
    out: &mut Vec<u8>,
    quantize: fn(&[f32], &mut Vec<u8>),
) {
    use rayon::prelude::*;
    if cols == 0 {
        return;
    }
    // About 64K weights per task: enough to pay for the task, small enough to spread.
    let rows_per_task = (65_536 / cols.max(1)).max(1);
    let parts: Vec<Vec<u8>> = values
        .par_chunks(rows_per_task * cols.max(1))
        .map(|span| {
            let mut part = Vec::new();
            for row in span.chunks_exact(cols) {
                quantize(row, &mut part);
            }
            part
        })
        .collect();
    for p in parts {
        out.extend_from_slice(&p);
    }
}
