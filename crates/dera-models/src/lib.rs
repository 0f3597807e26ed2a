//! Causal language models that load Hugging Face checkpoints and compute what transformers
//! computes.
//!
//! The story of a forward pass: a checkpoint directory ([`dera_checkpoint::Checkpoint`]) gives a
//! [`ModelConfig`] (from `config.json`, current or legacy form) and weights; [`load`] builds a
//! [`Model`] on a burn [`Device`] (flex by default, ndarray or cuda as cargo features) and the
//! [`Tokenizer`]; [`CausalLm::forward`] runs token ids through the model, extending a
//! [`KvCache`] that the caller owns, and returns next-token logits.
//!
//! Supported families: Llama (Llama 2/3 with llama3 RoPE scaling, Mistral, SmolLM2), Qwen2 and
//! GPT-2. Weights of any float width are computed in `f32`.

#![deny(missing_docs)]

mod cache;
mod config;
mod device;
mod error;
mod gpt2;
mod layers;
mod llama;
mod model;
mod rope;
pub mod testing;
mod tokenizer;
mod weights;

pub use burn;
pub use burn::tensor::{Device, Int, Tensor, TensorData};
pub use cache::KvCache;
pub use config::{Activation, Architecture, ModelConfig, RopeScaling};
pub use device::DeviceKind;
pub use error::ModelError;
pub use gpt2::Gpt2;
pub use llama::Llama;
pub use model::{CausalLm, LoadedModel, Model, load, load_from_source};
pub use tokenizer::{TokenStream, Tokenizer};
pub use weights::{HostWeights, Weights};
