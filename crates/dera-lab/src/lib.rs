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
//! calls.

#![deny(missing_docs)]

pub mod cli;
pub mod compare;
pub mod corpus;
pub mod dpo;
pub mod error;
pub mod export;
pub mod pairwise;
pub mod params;
pub mod plot;
pub mod reward;
pub mod sweep;
pub mod tokenizer;
pub mod train;

pub use error::LabError;
pub use reward::Reward;

/// The committed models, relative to this crate: `<workspace>/assets/models`.
pub fn default_assets_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}
