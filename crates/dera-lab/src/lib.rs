//! The DeRa experiments lab: tiny models trained here, and the experiments run on them.
//!
//! The story: the Debian fortunes ([`corpus`]) train a byte-level BPE ([`tokenizer`]) and a
//! tiny Llama by next-token SFT ([`train`]), using the very model code of [`dera_models`] built
//! over trainable leaf tensors ([`params`]). Responses sampled from the SFT model with the
//! [`dera`] engine are ranked by programmatic [`reward`]s and DPO ([`dpo`]) aligns a copy at a
//! KL strength `beta`. [`export`] writes each model as a Hugging Face checkpoint. Then
//! [`sweep`] samples the DeRa mixture over a lambda grid (reward, length, KL per lambda,
//! [`plot`]ted as SVG or PNG), [`pairwise`] measures the paper's pairwise accuracy, and
//! [`compare`] sets DeRa against models retrained at `beta / lambda` and weight-merged models
//! (the paper's Figure 2). [`cli`] holds the clap arguments and entry points the `dera` binary
//! calls; the demo runs on the models embedded by [`dera_assets`].
//!
//! Training (`tokenizer`, `params`, `train`, `dpo`, `export`: burn autodiff) is the `train`
//! feature, on by default; the `dera` CLI uses the lab without it.

#![deny(missing_docs)]

pub mod cli;
pub mod compare;
pub mod corpus;
#[cfg(feature = "train")]
pub mod dpo;
pub mod error;
#[cfg(feature = "train")]
pub mod export;
pub mod pairwise;
#[cfg(feature = "train")]
pub mod params;
pub mod plot;
pub mod reward;
pub mod sweep;
#[cfg(feature = "train")]
pub mod tokenizer;
#[cfg(feature = "train")]
pub mod train;

pub use error::LabError;
pub use reward::Reward;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
