use std::path::PathBuf;

/// Everything that can go wrong while reading a checkpoint directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be opened, mapped or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A required file does not exist.
    #[error("missing file {path}: {what}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What it was needed for.
        what: String,
    },
    /// A JSON file does not parse or lacks a field.
    #[error("invalid JSON in {path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A safetensors file is truncated, corrupt or inconsistent.
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A GGUF file is truncated, corrupt, or describes a model dera cannot build.
    #[error("{0}")]
    Gguf(String),
    /// A shard named by the index would lie outside the checkpoint directory.
    #[error(
        "{index}: shard name {name:?} for tensor `{tensor}` {reason}; shards must be plain file names inside the checkpoint directory"
    )]
    ShardPath {
        /// The index file.
        index: PathBuf,
        /// The tensor whose shard it is.
        tensor: String,
        /// The shard name as written.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor is not in the checkpoint.
    #[error("tensor `{name}` not found in checkpoint {dir}")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A tensor has a dtype that cannot be converted to `f32`.
    #[error("tensor `{name}` in {path} has dtype {dtype}, expected F32, F16, BF16 or F64")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor has an unexpected shape.
    #[error("tensor `{name}` in {path} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
