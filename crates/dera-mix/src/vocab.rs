//! Agreeing on the logit width of several models.

use serde::{Deserialize, Serialize};

use crate::MixError;

/// What to do when models' logits differ in width (padded embedding matrices are common).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VocabPolicy {
    /// Different widths are an error.
    #[default]
    Strict,
    /// Mix over the first `n` entries, where `n` is the tokenizer's vocabulary size (or the
    /// narrowest model when no tokenizer size is known).
    TruncateToTokenizer,
}

/// The width to mix over: every model's width when they agree; under
/// [`VocabPolicy::TruncateToTokenizer`], the tokenizer's vocabulary size.
pub fn logit_width(
    widths: &[usize],
    tokenizer_vocab: Option<usize>,
    policy: VocabPolicy,
) -> Result<usize, MixError> {
    let (&reference, rest) = widths.split_first().ok_or(MixError::Empty)?;
    let narrowest = widths.iter().copied().min().unwrap_or(reference);
    let shared = tokenizer_vocab.unwrap_or(narrowest).min(narrowest);
    if let Some((index, &other)) = rest.iter().enumerate().find(|(_, w)| **w != reference) {
        if policy == VocabPolicy::Strict {
            return Err(MixError::VocabMismatch {
                reference,
                index,
                other,
                shared,
            });
        }
    } else if policy == VocabPolicy::Strict {
        return Ok(reference);
    }
    match tokenizer_vocab {
        Some(t) if t > narrowest => Err(MixError::TokenizerTooLarge {
            tokenizer: t,
            narrowest,
        }),
        _ => Ok(shared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_accepts_equal_and_names_both_sizes() {
        assert_eq!(logit_width(&[10, 10], None, VocabPolicy::Strict), Ok(10));
        let err = logit_width(&[10, 12], Some(9), VocabPolicy::Strict)
            .unwrap_err()
            .to_string();
        assert!(err.contains("10") && err.contains("12"), "{err}");
    }

    #[test]
    fn truncation_uses_tokenizer_size() {
        assert_eq!(
            logit_width(&[10, 12], Some(9), VocabPolicy::TruncateToTokenizer),
            Ok(9)
        );
        assert_eq!(
            logit_width(&[10, 12], None, VocabPolicy::TruncateToTokenizer),
            Ok(10)
        );
        assert!(logit_width(&[10, 12], Some(11), VocabPolicy::TruncateToTokenizer).is_err());
    }
}
