//! Error types for processor construction and sampling.

use thiserror::Error;

/// A processor was constructed with an out-of-range argument.
///
/// Every variant carries the offending value so the message names both the
/// parameter and what was passed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ProcessorError {
    /// `temperature` must be finite and strictly positive.
    #[error("temperature must be finite and > 0, got {0}")]
    Temperature(f32),
    /// `top_k` must be at least 1.
    #[error("top_k must be >= 1, got {0}")]
    TopK(usize),
    /// `top_p` must lie in `(0, 1]`.
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    /// `min_p` must lie in `[0, 1]`.
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    /// `min_tokens_to_keep` must be at least 1.
    #[error("min_tokens_to_keep must be >= 1, got {0}")]
    MinTokensToKeep(usize),
    /// `repetition_penalty` must be finite and strictly positive.
    #[error("repetition_penalty must be finite and > 0, got {0}")]
    RepetitionPenalty(f32),
    /// `frequency_penalty` must be finite.
    #[error("frequency_penalty must be finite, got {0}")]
    FrequencyPenalty(f32),
    /// `presence_penalty` must be finite.
    #[error("presence_penalty must be finite, got {0}")]
    PresencePenalty(f32),
    /// `no_repeat_ngram_size` must be at least 1.
    #[error("no_repeat_ngram_size must be >= 1, got {0}")]
    NoRepeatNGramSize(usize),
    /// A `logit_bias` value must be finite.
    #[error("logit_bias[{token}] must be finite, got {value}")]
    LogitBias {
        /// The token the bias is for.
        token: u32,
        /// The value given.
        value: f32,
    },
    /// `bad_words` must hold at least one sequence.
    #[error("bad_words must hold at least one sequence, got an empty list")]
    NoBadWords,
    /// Every `bad_words` sequence must hold at least one token.
    #[error("bad_words[{index}] is empty; every banned sequence needs at least one token")]
    EmptyBadWordSequence {
        /// Position of the empty sequence in the list.
        index: usize,
    },
}

/// Sampling could not pick a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SampleError {
    /// The logits row was empty.
    #[error("cannot sample from an empty logits row")]
    Empty,
    /// Every entry was `-inf` or NaN, so no token has positive probability.
    #[error("no token can be sampled: all {len} logits are -inf or NaN")]
    NoCandidates {
        /// Length of the row.
        len: usize,
    },
}
