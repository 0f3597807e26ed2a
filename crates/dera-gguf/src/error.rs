use std::path::PathBuf;

/// Everything that can go wrong while reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is truncated, corrupt or inconsistent.
    #[error("invalid GGUF file {path}: {what}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The field, metadata key or tensor concerned.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is missing, has a type dera cannot read, or an unexpected shape.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor (GGUF name).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The model the file describes is not one dera implements.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
}
