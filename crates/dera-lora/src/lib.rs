//! PEFT LoRA adapters as dera reads them.
//!
//! An adapter folder, as `peft`'s `save_pretrained` writes it, holds `adapter_config.json`
//! and `adapter_model.safetensors` with one pair of matrices per adapted linear layer:
//! `base_model.model.<module>.lora_A.weight` (`A`, `[r, in]`) and `...lora_B.weight` (`B`,
//! `[out, r]`). The adapted layer computes `y = x W^T + scale * (x A^T) B^T`, with
//! `scale = lora_alpha / r` (or `lora_alpha / sqrt(r)` with `use_rslora`), so the adapted
//! weight is `W + scale * B A`.
//!
//! [`Adapter::open`] reads and validates a folder ([`AdapterConfig`] refuses what dera does
//! not compute yet: DoRA, `modules_to_save`, bias training, per-module rank or alpha patterns)
//! and [`Adapter::check_against`] checks every module against the reference's weights. The
//! low-rank products are here too: [`LoraPair::add_delta`] for weight-space merges, and
//! [`Adapter::scaled`] / [`Adapter::stack`] with [`Adapter::write`] for a PEFT-loadable adapter
//! whose update is multiplied by lambda.
//! Models apply adapters in `dera-models`.

#![deny(missing_docs)]

mod adapter;
mod config;
mod error;

pub use adapter::{ADAPTER_WEIGHTS_FILE, Adapter, LoraPair, MAX_ADAPTER_TENSORS};
pub use config::{ADAPTER_CONFIG_FILE, AdapterConfig, MAX_RANK, TargetModules, is_adapter_dir};
pub use error::LoraError;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
