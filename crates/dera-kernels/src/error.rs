//! Errors of the kernels crate.

/// Why a weight matrix cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The byte buffer does not hold `rows x cols` values of the format.
    #[error("{format} matrix [{rows}, {cols}] needs {expected} bytes, got {found}")]
    Size {
        /// The format.
        format: crate::WeightFormat,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// Block formats need rows that are a whole number of 32-weight blocks.
    #[error("{format} needs rows of a multiple of {block} weights, the matrix has {cols} columns")]
    Blocks {
        /// The format.
        format: crate::WeightFormat,
        /// Weights per block.
        block: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// The shape overflows the address space.
    #[error("matrix shape [{rows}, {cols}] is too large")]
    TooLarge {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// An activation buffer of the wrong length.
    #[error("activations: expected {expected} values ({rows} rows of {cols}), got {found}")]
    Activations {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Values expected.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// Stacked matrices must share their column count.
    #[error("stacked matrices have {first} and {other} columns")]
    Stack {
        /// Columns of the first matrix.
        first: usize,
        /// Columns of another.
        other: usize,
    },
    /// An unknown format name.
    #[error(
        "unknown weight format `{0}` (expected f32, bf16, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl or iq4_xs)"
    )]
    UnknownFormat(String),
    /// A format dera reads from GGUF files but does not quantize to.
    #[error("dera reads {0} blocks from GGUF files but does not quantize to {0}")]
    NoQuantizer(crate::WeightFormat),
}
