//! The crate's error type.

use std::path::PathBuf;

/// Why an adapter cannot be used. Messages name the file, field, module or tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid or names a setting dera does not support.
    #[error("{path}: {field}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor of `adapter_model.safetensors` is missing, unexpected or malformed.
    #[error("{path}: tensor {tensor}: {reason}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// An adapted module does not fit the reference model.
    #[error("adapter {adapter}: module {module}: {reason}")]
    Module {
        /// The adapter folder.
        adapter: PathBuf,
        /// The module (`model.layers.0.self_attn.q_proj`).
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading the safetensors file failed.
    #[error(transparent)]
    Checkpoint(#[from] dera_checkpoint::CheckpointError),
    /// Writing an output failed or was refused.
    #[error(transparent)]
    File(#[from] dera_io::FileError),
}

impl LoraError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
