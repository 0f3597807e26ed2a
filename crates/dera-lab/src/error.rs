//! The lab's error type.

use std::path::PathBuf;

/// Errors of the lab's library parts.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON or JSONL file was malformed.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A command-line style specification (lambda grid, reward, shard) was malformed.
    #[error("invalid {what} {input:?}: {reason}")]
    Spec {
        /// What was being parsed.
        what: &'static str,
        /// The input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Tokenizer training or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model library failed.
    #[error(transparent)]
    Model(#[from] dera_models::ModelError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] dera::DeraError),
    /// A checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] dera_checkpoint::CheckpointError),
    /// An output was refused by the rule for outputs, or an input file broke a size limit.
    #[error(transparent)]
    File(#[from] dera_io::FileError),
    /// Anything else (training state, exports).
    #[error("{0}")]
    Other(String),
}

impl LabError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn spec(what: &'static str, input: &str, reason: impl Into<String>) -> Self {
        Self::Spec {
            what,
            input: input.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;
