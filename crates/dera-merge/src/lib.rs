//! Weight-space realignment: merge a reference checkpoint with K aligned checkpoints.
//!
//! The decoding-time method mixes the models' next-token distributions; its weight-space
//! fallback mixes their parameters instead, tensor by tensor:
//!
//! ```text
//! theta = c_ref * theta_ref + sum_i c_i * theta_i,   c_ref = 1 - sum_i lambda_i,   c_i = lambda_i
//! ```
//!
//! The coefficient form (not `theta_ref + lambda * delta`) makes `lambda = 0` return the
//! reference and `lambda = e_i` return model `i` bit for bit, in any dtype. Sums run in `f32`
//! (or `f64`, [`Accumulate`]) and round once, to nearest even, to the output dtype.
//!
//! [`merge_checkpoints`] validates every input, then streams the merged tensors chunk by chunk
//! into safetensors shards in a hidden temporary directory that is renamed into place on
//! success; memory stays at a few chunk buffers whatever the model size. [`merge_in_memory`]
//! computes the same values into a [`TensorMap`]; [`plan`] is the dry run.
//!
//! ```no_run
//! use dera_merge::{MergeInputs, MergeOptions, merge_checkpoints};
//! # fn main() -> Result<(), dera_merge::MergeError> {
//! let inputs = MergeInputs {
//!     reference: "base".into(),
//!     aligned: vec!["instruct".into()],
//!     lambdas: vec![0.3],
//! };
//! let report = merge_checkpoints(&inputs, "merged".as_ref(), &MergeOptions::default(), None)?;
//! println!("{report}");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod compute;
mod error;
mod plan;
mod spec;
mod validate;
mod writer;

pub use compute::merge_in_memory;
pub use dera_checkpoint::TensorMap;
pub use error::{MergeError, Result};
pub use plan::{MergePlan, ShardPlan, TensorPlan, plan, shard_file_name};
pub use spec::{
    Accumulate, DEFAULT_MAX_SHARD_SIZE, MergeInputs, MergeOptions, OutDtype, Progress, VocabPolicy,
    coefficients, parse_size,
};
pub use writer::{COPIED_FILES, MergeReport, merge_checkpoints};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
