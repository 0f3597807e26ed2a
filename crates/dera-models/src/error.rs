use std::path::PathBuf;

use dera_checkpoint::CheckpointError;

/// Everything that can go wrong while configuring, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading the checkpoint failed (missing file, corrupt safetensors, missing tensor, shape).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A `config.json` field is missing or invalid.
    #[error("{path}: field `{field}`: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The architecture is not one dera implements.
    #[error("{path}: unsupported architecture {found:?}; supported: {supported}")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// What the config names.
        found: String,
        /// The supported `architectures` / `model_type` values.
        supported: String,
    },
    /// The embedding matrix does not match the configured vocabulary.
    #[error(
        "vocabulary mismatch in {path}: config.json says vocab_size {config}, tensor `{tensor}` has {weights} rows"
    )]
    VocabMismatch {
        /// The checkpoint directory.
        path: PathBuf,
        /// `vocab_size` from the config.
        config: usize,
        /// Rows of the tensor.
        weights: usize,
        /// The tensor.
        tensor: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The requested device is not compiled in or not available.
    #[error("device `{name}`: {reason}")]
    Device {
        /// The device name.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A forward pass was given invalid input.
    #[error("invalid model input: {0}")]
    Input(String),
    /// A weight matrix could not be kept in the requested format.
    #[error("tensor `{tensor}`: {reason}")]
    Weight {
        /// The tensor.
        tensor: String,
        /// What went wrong.
        reason: String,
    },
    /// A LoRA adapter could not be read or does not fit the model.
    #[error(transparent)]
    Adapter(#[from] dera_lora::LoraError),
    /// Reading a tensor back from the device failed.
    #[error("reading tensor from device: {0}")]
    Readback(String),
}
