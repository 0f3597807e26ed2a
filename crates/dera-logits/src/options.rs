//! [`SamplingOptions`]: a generation-config-like description of a processor chain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bias::LogitBias;

use crate::constraints::{BadWords, MinNewTokens, NoRepeatNGram, SuppressTokens};
use crate::error::ProcessorError;
use crate::penalties::{FrequencyPenalty, PresencePenalty, RepetitionPenalty};
use crate::processor::ProcessorChain;
use crate::warpers::{MinP, Temperature, TopK, TopP};

/// Decoding options in the spirit of transformers' `GenerationConfig`.
///
/// Every field is optional; `SamplingOptions::default()` builds an empty chain. Missing
/// fields deserialize to their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingOptions {
    /// Temperature; `1.0` is skipped.
    pub temperature: Option<f32>,
    /// Top-k; `0` means disabled (as in transformers).
    pub top_k: Option<usize>,
    /// Top-p (nucleus); `1.0` is skipped.
    pub top_p: Option<f32>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// A bias added to the logits of each token at every step (OpenAI's `logit_bias`; in JSON
    /// an object from token ids to numbers); empty adds nothing.
    pub logit_bias: BTreeMap<u32, f32>,
    /// Transformers repetition penalty over prompt + generated; `1.0` is skipped.
    pub repetition_penalty: Option<f32>,
    /// OpenAI frequency penalty over generated tokens; `0.0` is skipped.
    pub frequency_penalty: Option<f32>,
    /// OpenAI presence penalty over generated tokens; `0.0` is skipped.
    pub presence_penalty: Option<f32>,
    /// Forbid repeating n-grams of this size; `0` means disabled.
    pub no_repeat_ngram_size: Option<usize>,
    /// Token ids banned at every step.
    pub suppress_tokens: Vec<u32>,
    /// Banned token sequences (single-token sequences equal to an EOS id are dropped).
    pub bad_words: Vec<Vec<u32>>,
    /// Ban EOS until this many tokens were generated; needs `eos_ids`.
    pub min_new_tokens: Option<usize>,
    /// End-of-sequence token ids.
    pub eos_ids: Vec<u32>,
}

impl ProcessorChain {
    /// Builds the chain described by `opts`, in transformers' order.
    ///
    /// Logits processors first: logit bias (where transformers puts its sequence bias),
    /// repetition penalty, frequency penalty, presence penalty,
    /// no-repeat-ngram, bad words, min-new-tokens, suppress tokens; then the warpers:
    /// temperature, top-k, top-p, min-p. Options set to their identity value (see the
    /// field docs) add nothing, as in transformers' `generate`. Invalid values fail with the
    /// corresponding [`ProcessorError`].
    pub fn from_options(opts: &SamplingOptions) -> Result<Self, ProcessorError> {
        let mut chain = Self::processors_from_options(opts)?;
        chain.extend(Self::warpers_from_options(opts)?);
        Ok(chain)
    }

    /// The first half of [`ProcessorChain::from_options`]: penalties and constraints (what
    /// transformers calls logits processors), which see raw scores.
    pub fn processors_from_options(opts: &SamplingOptions) -> Result<Self, ProcessorError> {
        let mut chain = ProcessorChain::new();
        if !opts.logit_bias.is_empty() {
            chain.add(LogitBias::new(&opts.logit_bias)?);
        }
        if let Some(r) = opts.repetition_penalty.filter(|&r| r != 1.0) {
            chain.add(RepetitionPenalty::new(r)?);
        }
        if let Some(f) = opts.frequency_penalty.filter(|&f| f != 0.0) {
            chain.add(FrequencyPenalty::new(f)?);
        }
        if let Some(p) = opts.presence_penalty.filter(|&p| p != 0.0) {
            chain.add(PresencePenalty::new(p)?);
        }
        if let Some(n) = opts.no_repeat_ngram_size.filter(|&n| n > 0) {
            chain.add(NoRepeatNGram::new(n)?);
        }
        if !opts.bad_words.is_empty()
            && let Some(bad) =
                BadWords::excluding_eos(opts.bad_words.iter().cloned(), &opts.eos_ids)?
        {
            chain.add(bad);
        }
        if let Some(n) = opts.min_new_tokens.filter(|&n| n > 0)
            && !opts.eos_ids.is_empty()
        {
            chain.add(MinNewTokens::new(n, opts.eos_ids.iter().copied()));
        }
        if !opts.suppress_tokens.is_empty() {
            chain.add(SuppressTokens::new(opts.suppress_tokens.iter().copied()));
        }
        Ok(chain)
    }

    /// The second half of [`ProcessorChain::from_options`]: the warpers (temperature, then
    /// truncation), which reshape the distribution a token is drawn from.
    pub fn warpers_from_options(opts: &SamplingOptions) -> Result<Self, ProcessorError> {
        let mut chain = ProcessorChain::new();
        if let Some(t) = opts.temperature.filter(|&t| t != 1.0) {
            chain.add(Temperature::new(t)?);
        }
        if let Some(k) = opts.top_k.filter(|&k| k != 0) {
            chain.add(TopK::new(k)?);
        }
        if let Some(p) = opts.top_p.filter(|&p| p != 1.0) {
            chain.add(TopP::new(p)?);
        }
        if let Some(p) = opts.min_p {
            chain.add(MinP::new(p)?);
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{Context, LogitsProcessor};

    #[test]
    fn default_options_build_an_empty_chain() {
        let chain = ProcessorChain::from_options(&SamplingOptions::default()).unwrap();
        assert!(chain.is_empty());
    }

    #[test]
    fn full_options_build_in_transformers_order() {
        let opts = SamplingOptions {
            temperature: Some(0.7),
            top_k: Some(40),
            top_p: Some(0.9),
            min_p: Some(0.05),
            logit_bias: BTreeMap::from([(3, 1.0)]),
            repetition_penalty: Some(1.1),
            frequency_penalty: Some(0.5),
            presence_penalty: Some(0.5),
            no_repeat_ngram_size: Some(3),
            suppress_tokens: vec![7],
            bad_words: vec![vec![1, 2]],
            min_new_tokens: Some(4),
            eos_ids: vec![0],
        };
        let chain = ProcessorChain::from_options(&opts).unwrap();
        assert_eq!(
            chain.names(),
            vec![
                "LogitBias",
                "RepetitionPenalty",
                "FrequencyPenalty",
                "PresencePenalty",
                "NoRepeatNGram",
                "BadWords",
                "MinNewTokens",
                "SuppressTokens",
                "Temperature",
                "TopK",
                "TopP",
                "MinP",
            ]
        );
    }

    #[test]
    fn identity_values_are_skipped() {
        let opts = SamplingOptions {
            temperature: Some(1.0),
            top_k: Some(0),
            top_p: Some(1.0),
            repetition_penalty: Some(1.0),
            frequency_penalty: Some(0.0),
            presence_penalty: Some(0.0),
            no_repeat_ngram_size: Some(0),
            min_new_tokens: Some(3), // no eos ids
            bad_words: vec![vec![2]],
            eos_ids: vec![],
            ..Default::default()
        };
        let chain = ProcessorChain::from_options(&opts).unwrap();
        assert_eq!(chain.names(), vec!["BadWords"]);
        // EOS-only bad words vanish
        let opts = SamplingOptions {
            bad_words: vec![vec![2]],
            eos_ids: vec![2],
            ..Default::default()
        };
        let chain = ProcessorChain::from_options(&opts).unwrap();
        assert!(chain.is_empty());
    }

    #[test]
    fn invalid_values_are_reported() {
        let bad = |opts: SamplingOptions| ProcessorChain::from_options(&opts).unwrap_err();
        assert_eq!(
            bad(SamplingOptions {
                temperature: Some(0.0),
                ..Default::default()
            }),
            ProcessorError::Temperature(0.0)
        );
        assert_eq!(
            bad(SamplingOptions {
                top_p: Some(1.5),
                ..Default::default()
            }),
            ProcessorError::TopP(1.5)
        );
        assert_eq!(
            bad(SamplingOptions {
                min_p: Some(-0.5),
                ..Default::default()
            }),
            ProcessorError::MinP(-0.5)
        );
        let e = bad(SamplingOptions {
            repetition_penalty: Some(-2.0),
            ..Default::default()
        });
        assert_eq!(
            e.to_string(),
            "repetition_penalty must be finite and > 0, got -2"
        );
        assert_eq!(
            bad(SamplingOptions {
                bad_words: vec![vec![]],
                ..Default::default()
            }),
            ProcessorError::EmptyBadWordSequence { index: 0 }
        );
    }

    #[test]
    fn chain_matches_manual_application() {
        let opts = SamplingOptions {
            repetition_penalty: Some(2.0),
            temperature: Some(0.5),
            top_k: Some(2),
            ..Default::default()
        };
        let chain = ProcessorChain::from_options(&opts).unwrap();
        let mut row = vec![4.0, 3.0, -1.0, 2.5];
        chain.process(&mut row, &Context::new(&[0], &[]));
        // rep: [2, 3, -1, 2.5]; temp: [4, 6, -2, 5]; top-2: [-inf, 6, -inf, 5]
        assert_eq!(row, vec![f32::NEG_INFINITY, 6.0, f32::NEG_INFINITY, 5.0]);
    }

    #[test]
    fn serde_round_trip_and_partial_json() {
        let opts = SamplingOptions {
            temperature: Some(0.8),
            bad_words: vec![vec![1, 2]],
            logit_bias: BTreeMap::from([(7, -2.5)]),
            ..Default::default()
        };
        let json = serde_json::to_string(&opts).unwrap();
        // The bias is OpenAI-shaped: token ids as the object's keys.
        assert!(json.contains(r#""logit_bias":{"7":-2.5}"#), "{json}");
        let back: SamplingOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, opts);
        let partial: SamplingOptions = serde_json::from_str(r#"{"top_k": 50}"#).unwrap();
        assert_eq!(partial.top_k, Some(50));
        assert_eq!(partial.temperature, None);
        assert!(partial.logit_bias.is_empty());
    }

    #[test]
    fn a_non_finite_bias_is_reported() {
        let e = ProcessorChain::from_options(&SamplingOptions {
            logit_bias: BTreeMap::from([(2, f32::NAN)]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(e, ProcessorError::LogitBias { token: 2, .. }),
            "{e}"
        );
    }
}
