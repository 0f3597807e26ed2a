//! CPU kernels for decode-shaped products: `y = x W^T` for a few activation rows `x` against a
//! weight matrix `W` kept in its stored (or block-quantized) form.
//!
//! The story: a [`HostMatrix`] holds `W` `[rows, cols]` as [`WeightFormat::F32`], `BF16`,
//! `F16`, or llama.cpp's 32-weight blocks [`WeightFormat::Q8_0`] / [`WeightFormat::Q4_0`] /
//! [`WeightFormat::Q4_1`] / [`WeightFormat::Q5_0`] / [`WeightFormat::Q5_1`] and 256-weight [`WeightFormat::Q4K`] / [`WeightFormat::Q5K`] /
//! [`WeightFormat::Q6K`] super-blocks ([`quant`], same byte layout as GGUF), owned or borrowed from a memory map ([`Bytes`]).
//! [`matmul_t`] splits the weight rows of one or more stacked matrices over a spinning thread
//! [`pool`] (sized like the rayon pool) and computes every output as one dot product with `f32`
//! accumulation, using AVX-512 or AVX2/FMA when the CPU has them ([`simd::Isa`], detected at run
//! time) and a portable loop otherwise. On the vector paths, Q8_0/Q4_0 blocks multiply the
//! activations rounded to 16-bit integers per 32-value block (within half a step of
//! `max|x in block| / 32767`), summed exactly in integers and converted once per block; Q4_1,
//! Q5_0, Q5_1 and the K-quants are widened in registers to their dequantized `f32` values and multiplied as
//! `f32` weights (the bits of the dequantized matrix's product).
//!
//! Every output element is computed by the same instruction sequence whatever the thread count
//! or the number of activation rows, so results are bit-identical at 1, 2 or N threads and a row
//! gives the same bits alone or in a batch. Different instruction sets (AVX-512 vs AVX2 vs
//! portable) sum in different orders and may differ in the last bits.
//!
//! Weights that stay in cache make a batched product compute-bound instead: there a dot product
//! pays for its horizontal sums. [`HostMatrix::with_panels`] also holds a float matrix in panels
//! of 16 rows, and products then broadcast each activation into 16 outputs at once, one fused
//! multiply-add chain per output (the same bits on every instruction set). [`math`] has the
//! element-wise exponential of the decode path, vectorized with the same bits in every lane.

#![deny(missing_docs)]

mod bandwidth;
mod bytes;
mod error;
mod format;
mod kquant;
pub mod math;
mod matrix;
mod panels;
pub mod pool;
pub mod quant;
pub mod simd;

pub use bandwidth::read_bandwidth_gbs;
pub use bytes::Bytes;
pub use error::KernelError;
pub use format::WeightFormat;
pub use matrix::{HostMatrix, matmul_t, matmul_t_with};
pub use pool::{for_each, for_each_within, in_serial, parallel_for, serial};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
