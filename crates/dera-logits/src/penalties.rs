//! Penalties on tokens that already occurred: [`RepetitionPenalty`] (transformers),
//! [`FrequencyPenalty`] and [`PresencePenalty`] (OpenAI).

use crate::error::ProcessorError;
use crate::processor::{Context, LogitsProcessor};
use crate::scratch;

/// Transformers' `RepetitionPenaltyLogitsProcessor` (CTRL-style penalty).
///
/// For every distinct token in prompt + generated, a negative logit is multiplied by `r`
/// and a non-negative one divided by `r`. Each token is penalised once, however often it
/// occurred. `r > 1` discourages repetition; `r == 1` is the identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepetitionPenalty {
    penalty: f32,
}

impl RepetitionPenalty {
    /// A repetition penalty; `penalty` must be finite and `> 0`.
    pub fn new(penalty: f32) -> Result<Self, ProcessorError> {
        if penalty.is_finite() && penalty > 0.0 {
            Ok(Self { penalty })
        } else {
            Err(ProcessorError::RepetitionPenalty(penalty))
        }
    }

    /// The penalty factor.
    pub fn value(&self) -> f32 {
        self.penalty
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        let r = self.penalty;
        scratch::with(&scratch::TOKENS, |seen| {
            seen.extend(ctx.all_tokens());
            seen.sort_unstable();
            seen.dedup();
            for &t in seen.iter() {
                if let Some(x) = logits.get_mut(t as usize) {
                    *x = if *x < 0.0 { *x * r } else { *x / r };
                }
            }
        });
    }

    fn name(&self) -> &'static str {
        "RepetitionPenalty"
    }
}

/// Calls `f(token, count)` for every distinct generated token (in ascending id order).
fn for_each_generated_count(ctx: &Context<'_>, mut f: impl FnMut(u32, usize)) {
    scratch::with(&scratch::TOKENS, |ids| {
        ids.extend_from_slice(ctx.generated);
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            f(run[0], run.len());
        }
    });
}

/// OpenAI frequency penalty: `logit -= f * count`, with `count` the number of times the
/// token occurs in the generated tokens (the prompt is not counted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrequencyPenalty {
    penalty: f32,
}

impl FrequencyPenalty {
    /// A frequency penalty; `penalty` must be finite (negative values encourage repetition).
    pub fn new(penalty: f32) -> Result<Self, ProcessorError> {
        if penalty.is_finite() {
            Ok(Self { penalty })
        } else {
            Err(ProcessorError::FrequencyPenalty(penalty))
        }
    }

    /// The penalty per occurrence.
    pub fn value(&self) -> f32 {
        self.penalty
    }
}

impl LogitsProcessor for FrequencyPenalty {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        let f = self.penalty;
        for_each_generated_count(ctx, |t, count| {
            if let Some(x) = logits.get_mut(t as usize) {
                *x -= f * count as f32;
            }
        });
    }

    fn name(&self) -> &'static str {
        "FrequencyPenalty"
    }
}

/// OpenAI presence penalty: `logit -= p` once for every token that occurs at least once
/// in the generated tokens (the prompt is not counted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresencePenalty {
    penalty: f32,
}

impl PresencePenalty {
    /// A presence penalty; `penalty` must be finite (negative values encourage repetition).
    pub fn new(penalty: f32) -> Result<Self, ProcessorError> {
        if penalty.is_finite() {
            Ok(Self { penalty })
        } else {
            Err(ProcessorError::PresencePenalty(penalty))
        }
    }

    /// The penalty for presence.
    pub fn value(&self) -> f32 {
        self.penalty
    }
}

impl LogitsProcessor for PresencePenalty {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        let p = self.penalty;
        for_each_generated_count(ctx, |t, _| {
            if let Some(x) = logits.get_mut(t as usize) {
                *x -= p;
            }
        });
    }

    fn name(&self) -> &'static str {
        "PresencePenalty"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn repetition_penalty_known_values() {
        let r = RepetitionPenalty::new(2.0).unwrap();
        let mut row = vec![4.0, -3.0, 1.0, 0.0, -1.0, NEG];
        // token 0 seen in prompt, token 1 seen twice (penalised once), 3 (zero), 5 (-inf);
        // 9 is out of range and ignored.
        let ctx = Context::new(&[0, 1], &[1, 3, 5, 9]);
        r.process(&mut row, &ctx);
        assert_eq!(row, vec![2.0, -6.0, 1.0, 0.0, -1.0, NEG]);
        assert_eq!(r.value(), 2.0);
    }

    #[test]
    fn repetition_penalty_validation() {
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(RepetitionPenalty::new(bad).is_err(), "{bad}");
        }
        let msg = RepetitionPenalty::new(0.0).unwrap_err().to_string();
        assert!(
            msg.contains("repetition_penalty") && msg.contains('0'),
            "{msg}"
        );
        // r < 1 is allowed and rewards repetition.
        let mut row = vec![2.0, -2.0];
        RepetitionPenalty::new(0.5)
            .unwrap()
            .process(&mut row, &Context::new(&[], &[0, 1]));
        assert_eq!(row, vec![4.0, -1.0]);
    }

    #[test]
    fn frequency_and_presence_penalties() {
        let ctx = Context::new(&[2, 2, 2], &[0, 1, 0, 0]);
        let mut row = vec![1.0, 1.0, 1.0];
        FrequencyPenalty::new(0.5).unwrap().process(&mut row, &ctx);
        // token 0 x3, token 1 x1, token 2 only in the prompt
        assert_eq!(row, vec![-0.5, 0.5, 1.0]);
        let mut row = vec![1.0, 1.0, 1.0];
        PresencePenalty::new(0.25).unwrap().process(&mut row, &ctx);
        assert_eq!(row, vec![0.75, 0.75, 1.0]);
        assert!(FrequencyPenalty::new(f32::NAN).is_err());
        assert!(PresencePenalty::new(f32::INFINITY).is_err());
        assert!(FrequencyPenalty::new(-1.0).is_ok());
    }
}
