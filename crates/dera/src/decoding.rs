//! How a sequence decodes after its prompt: one set of controls for a batch
//! ([`crate::GenerateOptions`]), a session's sequence ([`crate::SequenceRequest`]) and servers
//! built on them.

use dera_logits::SamplingOptions;

/// Decoding controls of a sequence: how long, how tokens are chosen, when to stop and what to
/// record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoding {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Built-in processors (penalties, constraints, temperature, truncation). An empty
    /// `eos_ids` means the reference's EOS ids (for `min_new_tokens` and `bad_words`).
    pub sampling: SamplingOptions,
    /// Pick the argmax instead of sampling.
    pub greedy: bool,
    /// Sampling seed (of a batch: the base, see [`crate::Request::seed`]).
    pub seed: u64,
    /// Stop when the generated text contains one of these strings (the text is cut before it).
    pub stop_strings: Vec<String>,
    /// Stop on the reference model's EOS ids.
    pub stop_on_eos: bool,
    /// Record each chosen token's log-probability under the mixed distribution, with that many
    /// top alternatives.
    pub logprobs: Option<usize>,
    /// Record `KL(p_mix || p_ref)` of every next-token distribution (runs the reference on
    /// the sequence even when its coefficient is zero).
    pub kl_to_reference: bool,
}

impl Default for Decoding {
    /// Sampled with seed 0, 64 new tokens at most, stopping on EOS, nothing recorded.
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: SamplingOptions::default(),
            greedy: false,
            seed: 0,
            stop_strings: Vec::new(),
            stop_on_eos: true,
            logprobs: None,
            kl_to_reference: false,
        }
    }
}

impl Decoding {
    /// Greedy decoding of at most `max_new_tokens`, stopping on EOS.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            greedy: true,
            ..Self::default()
        }
    }
}
