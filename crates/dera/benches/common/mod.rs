//! Random SmolLM2-135M-shaped models for the benches and bench examples: the shared
//! [`dera::dera_models::testing`] builders, with panics instead of errors (bench code only).
//!
//! Shared by `benches/dera_step.rs` and `examples/bench_{decode,sweep}.rs` (through `#[path]`).

#![allow(dead_code, unused_imports)]

use dera::dera_models::testing;
pub use dera::dera_models::testing::{Shape, XorShift, prompt, random_weights, share};
use dera::dera_models::{Device, LoadedModel};

/// A random model of `shape` on `device`; different seeds give different models.
pub fn random_model(shape: &Shape, seed: u64, device: &Device) -> LoadedModel {
    testing::random_model(shape, seed, device).expect("load random model")
}
