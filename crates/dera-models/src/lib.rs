//! Causal language models that load Hugging Face checkpoints and compute what transformers
//! computes.
//!
//! The story of a forward pass: a checkpoint directory ([`dera_checkpoint::Checkpoint`]) gives a
//! [`ModelConfig`] (from `config.json`, current or legacy form) and weights; [`load`] builds a
//! [`Model`] on a burn [`Device`] (flex by default, ndarray or cuda as cargo features) and the
//! [`Tokenizer`]; [`CausalLm::forward`] runs token ids through the model, extending a
//! [`KvCache`] that the caller owns, and returns next-token logits. [`CausalLm`] is also the
//! extension point for models written elsewhere: its contract (batching, the cache, row
//! selection and joining) is all the engine relies on.
//!
//! A GGUF file (llama.cpp's format) works wherever a checkpoint directory does: [`load_with`]
//! reads its config, weights, tokenizer and chat template through `dera_gguf`.
//!
//! Supported families: Llama (Llama 2/3 with llama3 RoPE scaling, Mistral, SmolLM2), Qwen2 and
//! GPT-2. A PEFT LoRA adapter turns a loaded model into "reference + adapter" without copying
//! a weight ([`load_adapter`], [`load_aligned`]), and [`Model::forward_adapters`] runs rows of
//! several adapters and the reference through one pass over the shared base weights.
//! Weight matrices stay in the checkpoint's precision (or the [`LoadOptions`] choice:
//! f32, bf16, f16, llama.cpp Q8_0/Q4_0); on the flex CPU device they are multiplied by
//! `dera_kernels` on every core with `f32` accumulation, activations are `f32` throughout, and
//! the Llama family runs a fused pass over host buffers whose KV cache grows in place.

#![deny(missing_docs)]

mod cache;
mod config;
mod device;
mod error;
mod gpt2;
mod host;
mod layers;
mod llama;
mod lora;
mod model;
mod precision;
mod rope;
pub mod testing;
mod tokenizer;
mod weights;

pub use burn;
pub use burn::tensor::{Device, Int, Tensor, TensorData};
pub use cache::KvCache;
pub use config::{Activation, Architecture, ModelConfig, RopeScaling};
pub use dera_gguf::{GgufModel, is_gguf_path};
pub use dera_kernels::{
    in_serial as in_serial_kernels, read_bandwidth_gbs, serial as serial_kernels,
};
pub use dera_lora::is_adapter_dir;
pub use device::DeviceKind;
pub use error::ModelError;
pub use gpt2::Gpt2;
pub use llama::Llama;
pub use lora::{LoraWeights, load_adapter, load_aligned};
pub use model::{
    CausalLm, LoadedModel, Model, gguf_config, load, load_from_source, load_from_source_with,
    load_with,
};
pub use precision::{LoadOptions, Quantization, WeightDtype, WeightFormat};
pub use tokenizer::{TokenStream, Tokenizer};
pub use weights::{HostWeights, Weights};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
