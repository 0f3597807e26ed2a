//! GGUF files (llama.cpp's format): quantized models with their tokenizer and chat template.
//!
//! The story: [`GgufFile::open`] memory-maps a GGUF v2/v3 file and validates its header (every
//! count, length, offset and alignment is checked against the file before anything is
//! allocated; errors name the field, key or tensor). Metadata is typed ([`Value`]), tensors are
//! described by [`TensorInfo`] and read in place or [`dequantize`]d (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, as ggml's reference code computes them).
//!
//! [`GgufModel`] turns a file into what a Hugging Face checkpoint directory gives: a
//! `config.json` equivalent ([`GgufModel::config_json`]), a [`dera_checkpoint::TensorSource`]
//! under Hugging Face tensor names (llama.cpp's q/k row permutation undone; Q8_0/Q4_0 handed out
//! as blocks, F32/F16/BF16 in place), the `tokenizer.json` that transformers builds from the
//! metadata ([`tokenizer_json`]), the chat template and end-of-sequence ids.
//! [`write_checkpoint`] writes it out as a checkpoint folder (for the weight merge).

#![deny(missing_docs)]

mod dequant;
mod error;
mod export;
mod file;
mod model;
mod tokenizer;
mod types;

pub use dequant::{DequantError, dequantize};
pub use error::GgufError;
pub use export::{ExportDtype, write_checkpoint};
pub use file::{DEFAULT_ALIGNMENT, GgufFile, MAX_ARRAY_ITEMS, TensorInfo, Value};
pub use model::{GgufModel, is_gguf_path};
pub use tokenizer::tokenizer_json;
pub use types::GgmlType;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
