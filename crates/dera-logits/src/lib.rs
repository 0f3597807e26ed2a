//! Host-side next-token logits processing and sampling for decoding-time realignment.
//!
//! At every decoding step a model yields one row of logits over the vocabulary. Before a
//! token is drawn, a [`ProcessorChain`] of [`LogitsProcessor`]s rewrites that row in place,
//! each seeing the token history through a [`Context`] (prompt and generated ids):
//!
//! 1. **Biases** add fixed offsets per token: [`LogitBias`] (OpenAI's `logit_bias`).
//! 2. **Penalties** shift scores of tokens already seen: [`RepetitionPenalty`]
//!    (transformers), [`FrequencyPenalty`] and [`PresencePenalty`] (OpenAI).
//! 3. **Constraints** ban tokens by setting them to `-inf`: [`NoRepeatNGram`],
//!    [`BadWords`], [`MinNewTokens`], [`SuppressTokens`].
//! 4. **Warpers** reshape what remains: [`Temperature`], then truncation by [`TopK`],
//!    [`TopP`] and [`MinP`].
//!
//! [`ProcessorChain::from_options`] builds this chain from [`SamplingOptions`] in
//! transformers' order, and a [`Sampler`] then picks the token, greedily or by seeded
//! categorical sampling over the numerically stable [`softmax`](softmax()). Semantics
//! follow Hugging Face transformers' `generation/logits_process.py`; every step is `O(V)`
//! (expected) in the vocabulary size.
//!
//! ```
//! use dera_logits::{Context, LogitsProcessor, ProcessorChain, Sampler, SamplingOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = SamplingOptions {
//!     repetition_penalty: Some(2.0),
//!     temperature: Some(0.5),
//!     top_k: Some(2),
//!     ..Default::default()
//! };
//! let chain = ProcessorChain::from_options(&opts)?;
//!
//! let prompt = [0u32];
//! let generated: [u32; 0] = [];
//! let mut logits = vec![4.0, 3.0, -1.0, 2.5];
//! chain.process(&mut logits, &Context::new(&prompt, &generated));
//! // token 0 was penalised (4 / 2), everything was divided by 0.5, and only the two
//! // best tokens survive top-k.
//! assert_eq!(logits, [f32::NEG_INFINITY, 6.0, f32::NEG_INFINITY, 5.0]);
//!
//! let mut sampler = Sampler::seeded(42);
//! let token = sampler.sample(&logits)?;
//! assert!(token == 1 || token == 3);
//! assert_eq!(Sampler::greedy().sample(&logits)?, 1);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod bias;
pub mod constraints;
pub mod error;
pub mod options;
pub mod penalties;
pub mod processor;
pub mod sampler;
mod scan;
mod scratch;
pub mod softmax;
pub mod warpers;

pub use bias::LogitBias;
pub use constraints::{BadWords, MinNewTokens, NoRepeatNGram, SuppressTokens};
pub use error::{ProcessorError, SampleError};
pub use options::SamplingOptions;
pub use penalties::{FrequencyPenalty, PresencePenalty, RepetitionPenalty};
pub use processor::{BoxedProcessor, Context, LogitsProcessor, ProcessorChain};
pub use sampler::{Sampler, argmax};
pub use softmax::{log_softmax, log_softmax_in_place, logsumexp, softmax, softmax_in_place};
pub use warpers::{MinP, Temperature, TopK, TopP};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
