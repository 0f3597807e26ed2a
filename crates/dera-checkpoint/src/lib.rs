//! Reading Hugging Face checkpoint directories without copying them into memory.
//!
//! A checkpoint is a directory with `config.json` and either one `model.safetensors` or a
//! sharded `model.safetensors.index.json` whose `weight_map` names the shard of every tensor.
//! [`Checkpoint::open`] memory-maps exactly the files that are named, validates every header
//! (a truncated or corrupt file is an error naming the file), and then hands out borrowed
//! [`RawTensor`] views or `f32` copies ([`Checkpoint::read_f32`]) of F32, F16, BF16 and F64 data.
//!
//! Models are built from any [`TensorSource`]: a [`Checkpoint`] or an in-memory [`TensorMap`].
//!
//! ```no_run
//! # fn main() -> Result<(), dera_checkpoint::CheckpointError> {
//! let ckpt = dera_checkpoint::Checkpoint::open("path/to/model".as_ref())?;
//! let config = ckpt.config()?;
//! let (values, shape) = ckpt.read_f32("model.embed_tokens.weight")?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod checkpoint;
mod convert;
mod error;
mod file;
mod source;

pub use checkpoint::{
    CONFIG_FILE, Checkpoint, GENERATION_CONFIG_FILE, INDEX_FILE, SINGLE_FILE, TOKENIZER_FILE,
    read_json,
};
pub use convert::{NonFiniteCount, bytes_to_f32, count_non_finite, dtype_name};
pub use error::CheckpointError;
pub use file::{RawTensor, SafetensorsFile, StoredTensor};
pub use safetensors::Dtype;
pub use source::{TensorMap, TensorSource};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
