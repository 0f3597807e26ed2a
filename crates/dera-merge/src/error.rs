//! The merge's error type.

use std::path::PathBuf;

use dera_checkpoint::CheckpointError;

/// Everything that can stop a merge. Each message names the file, tensor or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// An input checkpoint is missing, truncated or corrupt.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A mixture error without a merge-specific wording.
    #[error(transparent)]
    Mix(dera_mix::MixError),
    /// A mixing weight is NaN or infinite.
    #[error("lambda[{index}] = {value} is not finite")]
    NonFiniteLambda {
        /// Position in the lambda list.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A coefficient is finite but beyond [`dera_mix::MAX_COEFFICIENT`].
    #[error(
        "{what} = {value} is outside [-{limit}, {limit}]: larger coefficients overflow the weighted sum"
    )]
    CoefficientLimit {
        /// Which coefficient (`lambda[i]` or the reference's).
        what: String,
        /// Its value.
        value: f64,
        /// The limit.
        limit: f64,
    },
    /// A merged value is infinite or NaN although every input value it was computed from is
    /// finite: the sum overflowed the accumulation or output dtype.
    #[error(
        "tensor `{name}`: element {index} would be {value} in the output ({dtype}) although every input value there is finite; \
         the coefficients {coefficients:?} overflow it (use smaller lambdas, or a wider --dtype)"
    )]
    NonFiniteOutput {
        /// The tensor.
        name: String,
        /// Flat element index.
        index: usize,
        /// `inf`, `-inf` or `NaN`.
        value: String,
        /// The output dtype.
        dtype: String,
        /// `[c_ref, c_1, ..., c_K]`.
        coefficients: Vec<f64>,
    },
    /// The number of lambdas differs from the number of aligned checkpoints.
    #[error("{lambdas} lambda(s) given for {aligned} aligned checkpoint(s)")]
    LambdaCount {
        /// Lambdas given.
        lambdas: usize,
        /// Aligned checkpoints given.
        aligned: usize,
    },
    /// `model_type` or `architectures` differ between two `config.json` files.
    #[error(
        "config field `{field}` differs: {reference_value} in {reference} but {other_value} in {other}"
    )]
    Architecture {
        /// `model_type` or `architectures`.
        field: String,
        /// The reference checkpoint.
        reference: PathBuf,
        /// Its value (JSON).
        reference_value: String,
        /// The other checkpoint.
        other: PathBuf,
        /// Its value (JSON).
        other_value: String,
    },
    /// A tensor exists in one checkpoint but not in another.
    #[error("tensor `{name}` is in {present} but missing from {missing}")]
    MissingTensor {
        /// The tensor.
        name: String,
        /// A checkpoint that has it.
        present: PathBuf,
        /// A checkpoint that lacks it.
        missing: PathBuf,
    },
    /// A tensor's shape differs between two checkpoints.
    #[error(
        "tensor `{name}` has shape {reference_shape:?} in {reference} but {other_shape:?} in {other}"
    )]
    Shape {
        /// The tensor.
        name: String,
        /// The reference checkpoint.
        reference: PathBuf,
        /// Its shape there.
        reference_shape: Vec<usize>,
        /// The other checkpoint.
        other: PathBuf,
        /// Its shape there.
        other_shape: Vec<usize>,
    },
    /// A tensor's dtype differs between two checkpoints.
    #[error(
        "tensor `{name}` has dtype {reference_dtype} in {reference} but {other_dtype} in {other}"
    )]
    Dtype {
        /// The tensor.
        name: String,
        /// The reference checkpoint.
        reference: PathBuf,
        /// Its dtype there.
        reference_dtype: String,
        /// The other checkpoint.
        other: PathBuf,
        /// Its dtype there.
        other_dtype: String,
    },
    /// Embedding or output-head rows (vocabulary sizes) differ.
    #[error(
        "vocabulary mismatch: tensor `{name}` has {reference_rows} rows in {reference} but {other_rows} in {other} \
         (opt in to VocabPolicy::TruncateToSmallest to merge the first {} rows)",
        (*reference_rows).min(*other_rows)
    )]
    Vocab {
        /// The embedding or head tensor.
        name: String,
        /// The reference checkpoint.
        reference: PathBuf,
        /// Its vocabulary size.
        reference_rows: usize,
        /// The other checkpoint.
        other: PathBuf,
        /// Its vocabulary size.
        other_rows: usize,
    },
    /// A non-floating-point tensor differs between checkpoints, so it cannot be interpolated.
    #[error(
        "tensor `{name}` has non-float dtype {dtype} and differs between {reference} and {other}"
    )]
    NonFloat {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
        /// The reference checkpoint.
        reference: PathBuf,
        /// The checkpoint whose copy differs.
        other: PathBuf,
    },
    /// The output path breaks the rule for outputs (exists, is or holds an input, ...).
    #[error(transparent)]
    Output(#[from] dera_io::FileError),
    /// A size string such as `"5GB"` does not parse.
    #[error("invalid size {text:?}: {reason}")]
    Size {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl MergeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = MergeError> = std::result::Result<T, E>;
