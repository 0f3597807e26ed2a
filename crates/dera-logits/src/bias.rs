//! [`LogitBias`]: fixed per-token offsets (OpenAI's `logit_bias`, transformers' single-token
//! `sequence_bias`).

use std::collections::BTreeMap;

use crate::error::ProcessorError;
use crate::processor::{Context, LogitsProcessor};

/// Adds a fixed bias to the logits of chosen tokens at every step: `logit[t] += bias[t]`.
///
/// This is OpenAI's `logit_bias` (a bias of -100 or 100 in practice bans or forces a token)
/// and transformers' `SequenceBiasLogitsProcessor` restricted to one-token sequences. With
/// DeRa it shifts the *mixed* logits, after realignment and before penalties, constraints and
/// warpers. Ids beyond the row are ignored, as with every processor.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitBias {
    /// `(token, bias)`, ids increasing and distinct.
    bias: Vec<(u32, f32)>,
}

impl LogitBias {
    /// A bias per token; every value must be finite (a ban is [`crate::SuppressTokens`]).
    pub fn new(bias: &BTreeMap<u32, f32>) -> Result<Self, ProcessorError> {
        if let Some((&token, &value)) = bias.iter().find(|(_, v)| !v.is_finite()) {
            return Err(ProcessorError::LogitBias { token, value });
        }
        Ok(Self {
            bias: bias.iter().map(|(&t, &b)| (t, b)).collect(),
        })
    }

    /// The `(token, bias)` pairs, ids increasing.
    pub fn values(&self) -> &[(u32, f32)] {
        &self.bias
    }
}

impl LogitsProcessor for LogitBias {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        for &(t, b) in &self.bias {
            if let Some(x) = logits.get_mut(t as usize) {
                *x += b;
            }
        }
    }

    fn name(&self) -> &'static str {
        "LogitBias"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_each_bias_once_and_ignores_ids_beyond_the_row() {
        let map = BTreeMap::from([(0, 1.5), (2, -100.0), (9, 7.0)]);
        let b = LogitBias::new(&map).unwrap();
        let mut row = vec![1.0, 2.0, 3.0, f32::NEG_INFINITY];
        b.process(&mut row, &Context::default());
        assert_eq!(row, vec![2.5, 2.0, -97.0, f32::NEG_INFINITY]);
        assert_eq!(b.values(), &[(0, 1.5), (2, -100.0), (9, 7.0)]);
    }

    #[test]
    fn non_finite_biases_are_refused_naming_the_token() {
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = LogitBias::new(&BTreeMap::from([(1, 0.0), (4, v)])).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("logit_bias[4] must be finite, got {v}")
            );
        }
    }
}
