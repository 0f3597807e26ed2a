//! Decoding-time realignment (DeRa) of language models.
//!
//! A reference (SFT) model and K models aligned from it (one per reward) are loaded into a
//! [`Realigner`]. Every decoding step runs all of them in lockstep, each with its own KV cache
//! (the reference and LoRA adapters over its weights run as one batched pass over the shared
//! base, [`Realigner::adapter_groups`]), mixes their next-token logits on the device as
//!
//! ```text
//! h = (1 - sum_i lambda_i) * h_ref + sum_i lambda_i * h_i
//! ```
//!
//! brings only the mixed row to the host, runs the [`dera_logits`] processor chain and samples.
//! `lambda = 0` is the reference, `lambda = 1` the aligned model, `lambda > 1` extrapolates
//! toward weaker KL regularisation (`beta / lambda`). Each sequence may carry its own lambda
//! vector, sampling options, processors, seed and stop rules, and sequences that share a prompt
//! share its prefill.
//!
//! The flow: [`Realigner::load`] (or [`Realigner::from_parts`] with any [`CausalLm`] of your
//! own) -> a [`Session`]: [`Session::add`] [`SequenceRequest`]s (a prompt, a [`Mixture`] and a [`Decoding`]) at any time, [`Session::step`]
//! for one token of every live sequence ([`StepEvent`]s with incremental text),
//! [`Session::cancel`], [`Session::take_finished`]. [`Realigner::generate`] runs a batch of
//! [`Request`]s to the end and [`Realigner::stream`] iterates over one sequence's tokens;
//! [`Realigner::next_token_logprobs`] and [`Realigner::score`] give log-probabilities and KL.
//!
//! [`CausalLm`]: dera_models::CausalLm

#![deny(missing_docs)]

mod chat;
mod decoding;
mod error;
mod generate;
mod prompts;
mod realigner;
mod score;
mod session;

pub use chat::ChatTemplate;
pub use decoding::Decoding;
pub use dera_logits::{self, SamplingOptions};
pub use dera_logits::{BoxedProcessor, LogitsProcessor};
pub use dera_mix::{self, Mixture, VocabPolicy};
pub use dera_models::{self, DeviceKind, LoadOptions, Quantization, WeightDtype};
pub use error::DeraError;
pub use generate::{
    FinishReason, GenerateOptions, Generation, Request, SharedProcessor, Timing, TokenEvent,
    TokenIter,
};
pub use prompts::{PROMPT_CACHE_BYTES, PromptCacheStats};
pub use realigner::{CACHED_PARAMS, Realigner, SharedModel};
pub use score::{Score, kl_divergence};
pub use session::{Finished, SeqId, SequenceRequest, Session, StepEvent, TokenLogprob};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
