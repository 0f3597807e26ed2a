//! Hard constraints that ban tokens outright by setting their logits to `-inf`:
//! [`NoRepeatNGram`], [`BadWords`], [`MinNewTokens`] and [`SuppressTokens`].

use crate::error::ProcessorError;
use crate::processor::{Context, LogitsProcessor};
use crate::scratch;

const NEG: f32 = f32::NEG_INFINITY;

fn ban(logits: &mut [f32], token: u32) {
    if let Some(x) = logits.get_mut(token as usize) {
        *x = NEG;
    }
}

/// Transformers' `NoRepeatNGramLogitsProcessor`: forbids any n-gram from occurring twice
/// in prompt + generated.
///
/// With the last `n - 1` tokens as prefix, every token that followed an earlier occurrence
/// of that prefix is banned. For `n == 1` every token seen so far is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRepeatNGram {
    n: usize,
}

impl NoRepeatNGram {
    /// An n-gram blocker; `n` must be `>= 1`.
    pub fn new(n: usize) -> Result<Self, ProcessorError> {
        if n == 0 {
            Err(ProcessorError::NoRepeatNGramSize(n))
        } else {
            Ok(Self { n })
        }
    }

    /// The n-gram size.
    pub fn size(&self) -> usize {
        self.n
    }
}

impl LogitsProcessor for NoRepeatNGram {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        let n = self.n;
        let len = ctx.len();
        if len < n {
            // No complete n-gram yet (transformers: `cur_len + 1 < n` bans nothing, and at
            // `cur_len + 1 == n` there are no earlier n-grams to match).
            return;
        }
        scratch::with(&scratch::TOKENS, |tokens| {
            tokens.extend(ctx.all_tokens());
            let prefix = &tokens[len + 1 - n..];
            for window in tokens.windows(n) {
                if window[..n - 1] == *prefix {
                    ban(logits, window[n - 1]);
                }
            }
        });
    }

    fn name(&self) -> &'static str {
        "NoRepeatNGram"
    }
}

/// Sets the given token ids to `-inf` at every step (transformers'
/// `SuppressTokensLogitsProcessor`). Ids outside the vocabulary are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressTokens {
    ids: Vec<u32>,
}

impl SuppressTokens {
    /// Suppresses `ids` (duplicates are fine).
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Self {
        let mut ids: Vec<u32> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Self { ids }
    }

    /// The suppressed ids, sorted and deduplicated.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl LogitsProcessor for SuppressTokens {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        for &t in &self.ids {
            ban(logits, t);
        }
    }

    fn name(&self) -> &'static str {
        "SuppressTokens"
    }
}

/// Transformers' `NoBadWordsLogitsProcessor`: never completes a banned token sequence.
///
/// Single-token sequences are banned at every step. For a longer sequence, its last token is
/// banned when prompt + generated ends with the rest of it. Unlike released transformers
/// (which skips a sequence longer than the context, so a prefix equal to the *whole* context
/// is missed; huggingface/transformers#49093), a prefix matching the entire context counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadWords {
    single: Vec<u32>,
    multi: Vec<Vec<u32>>,
}

impl BadWords {
    /// Bans `sequences`; the list and every sequence in it must be non-empty.
    pub fn new(sequences: impl IntoIterator<Item = Vec<u32>>) -> Result<Self, ProcessorError> {
        let mut single = Vec::new();
        let mut multi = Vec::new();
        for (index, seq) in sequences.into_iter().enumerate() {
            match seq.len() {
                0 => return Err(ProcessorError::EmptyBadWordSequence { index }),
                1 => single.push(seq[0]),
                _ => multi.push(seq),
            }
        }
        if single.is_empty() && multi.is_empty() {
            return Err(ProcessorError::NoBadWords);
        }
        single.sort_unstable();
        single.dedup();
        Ok(Self { single, multi })
    }

    /// Like [`BadWords::new`] but first drops single-token sequences equal to an EOS id, as
    /// transformers does when `eos_token_id` is given. Returns `Ok(None)` if nothing is left.
    pub fn excluding_eos(
        sequences: impl IntoIterator<Item = Vec<u32>>,
        eos_ids: &[u32],
    ) -> Result<Option<Self>, ProcessorError> {
        let mut kept = Vec::new();
        for (index, seq) in sequences.into_iter().enumerate() {
            if seq.is_empty() {
                return Err(ProcessorError::EmptyBadWordSequence { index });
            }
            if !(seq.len() == 1 && eos_ids.contains(&seq[0])) {
                kept.push(seq);
            }
        }
        if kept.is_empty() {
            Ok(None)
        } else {
            Self::new(kept).map(Some)
        }
    }
}

impl LogitsProcessor for BadWords {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        for &t in &self.single {
            ban(logits, t);
        }
        for seq in &self.multi {
            let Some((last, prefix)) = seq.split_last() else {
                continue;
            };
            if ctx.ends_with(prefix) {
                ban(logits, *last);
            }
        }
    }

    fn name(&self) -> &'static str {
        "BadWords"
    }
}

/// Transformers' `MinNewTokensLengthLogitsProcessor`: bans every EOS id while fewer than
/// `min_new_tokens` tokens have been generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinNewTokens {
    min_new_tokens: usize,
    eos_ids: Vec<u32>,
}

impl MinNewTokens {
    /// Bans `eos_ids` until `min_new_tokens` tokens have been generated.
    pub fn new(min_new_tokens: usize, eos_ids: impl IntoIterator<Item = u32>) -> Self {
        Self {
            min_new_tokens,
            eos_ids: eos_ids.into_iter().collect(),
        }
    }

    /// The minimum number of new tokens.
    pub fn min_new_tokens(&self) -> usize {
        self.min_new_tokens
    }

    /// The banned end-of-sequence ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }
}

impl LogitsProcessor for MinNewTokens {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        if ctx.generated.len() < self.min_new_tokens {
            for &t in &self.eos_ids {
                ban(logits, t);
            }
        }
    }

    fn name(&self) -> &'static str {
        "MinNewTokens"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banned_after(
        p: &impl LogitsProcessor,
        vocab: usize,
        prompt: &[u32],
        generated: &[u32],
    ) -> Vec<u32> {
        let mut row = vec![0.0f32; vocab];
        p.process(&mut row, &Context::new(prompt, generated));
        row.iter()
            .enumerate()
            .filter(|(_, x)| **x == NEG)
            .map(|(i, _)| i as u32)
            .collect()
    }

    #[test]
    fn no_repeat_bigram() {
        let p = NoRepeatNGram::new(2).unwrap();
        // tokens: 1 2 3 1 -> prefix [1] was followed by 2 -> ban 2
        assert_eq!(banned_after(&p, 5, &[1, 2], &[3, 1]), vec![2]);
        // prefix [3] never followed by anything before -> nothing
        assert_eq!(banned_after(&p, 5, &[1, 2, 3], &[]), Vec::<u32>::new());
        // repeated prefix with two continuations: 1 2 1 3 1 -> ban 2 and 3
        assert_eq!(banned_after(&p, 5, &[], &[1, 2, 1, 3, 1]), vec![2, 3]);
    }

    #[test]
    fn no_repeat_trigram() {
        let p = NoRepeatNGram::new(3).unwrap();
        // 4 5 6 4 5 -> prefix [4 5] followed by 6 earlier -> ban 6
        assert_eq!(banned_after(&p, 8, &[4, 5, 6], &[4, 5]), vec![6]);
        // 4 5 6 5 5: prefix [5 5] never seen -> nothing; [4 5] does not end the sequence
        assert_eq!(banned_after(&p, 8, &[4, 5, 6], &[5, 5]), Vec::<u32>::new());
        // too short: fewer than n tokens
        assert_eq!(banned_after(&p, 8, &[4, 5], &[]), Vec::<u32>::new());
        // overlapping: 7 7 7 -> prefix [7 7] followed by 7 -> ban 7
        assert_eq!(banned_after(&p, 8, &[7, 7, 7], &[]), vec![7]);
    }

    #[test]
    fn no_repeat_unigram_bans_everything_seen() {
        let p = NoRepeatNGram::new(1).unwrap();
        assert_eq!(banned_after(&p, 6, &[4], &[1, 4, 9]), vec![1, 4]);
        assert!(NoRepeatNGram::new(0).is_err());
    }

    #[test]
    fn suppress_tokens() {
        let p = SuppressTokens::new([3, 1, 3, 100]);
        assert_eq!(p.ids(), &[1, 3, 100]);
        assert_eq!(banned_after(&p, 5, &[], &[]), vec![1, 3]);
    }

    #[test]
    fn bad_words_single_and_multi() {
        let p = BadWords::new([vec![4], vec![1, 2], vec![1, 2, 3]]).unwrap();
        // always ban 4; nothing ends with [1] or [1, 2]
        assert_eq!(banned_after(&p, 6, &[0], &[]), vec![4]);
        // ends with [1] -> ban 2
        assert_eq!(banned_after(&p, 6, &[0], &[1]), vec![2, 4]);
        // ends with [1, 2] -> ban 3
        assert_eq!(banned_after(&p, 6, &[0, 1], &[2]), vec![3, 4]);
        // a prefix equal to the whole context counts
        assert_eq!(banned_after(&p, 6, &[1, 2], &[]), vec![3, 4]);
        assert_eq!(banned_after(&p, 6, &[1], &[]), vec![2, 4]);
        assert_eq!(banned_after(&p, 6, &[], &[]), vec![4]);
        // out-of-vocabulary ids are ignored
        let p = BadWords::new([vec![9], vec![0, 10]]).unwrap();
        assert_eq!(banned_after(&p, 6, &[0], &[]), Vec::<u32>::new());
    }

    #[test]
    fn bad_words_validation_and_eos_filter() {
        assert_eq!(
            BadWords::new([vec![1], vec![]]).unwrap_err(),
            ProcessorError::EmptyBadWordSequence { index: 1 }
        );
        assert_eq!(
            BadWords::new(Vec::<Vec<u32>>::new()).unwrap_err(),
            ProcessorError::NoBadWords
        );
        let p = BadWords::excluding_eos([vec![2], vec![5], vec![2, 2]], &[2])
            .unwrap()
            .unwrap();
        // [2] dropped (it is EOS), [2, 2] kept
        assert_eq!(banned_after(&p, 6, &[], &[]), vec![5]);
        assert_eq!(banned_after(&p, 6, &[2], &[]), vec![2, 5]);
        assert_eq!(BadWords::excluding_eos([vec![2]], &[2]).unwrap(), None);
    }

    #[test]
    fn min_new_tokens() {
        let p = MinNewTokens::new(2, [0, 3]);
        assert_eq!(banned_after(&p, 4, &[1, 1, 1], &[]), vec![0, 3]);
        assert_eq!(banned_after(&p, 4, &[1], &[2]), vec![0, 3]);
        assert_eq!(banned_after(&p, 4, &[], &[2, 2]), Vec::<u32>::new());
        assert_eq!(p.min_new_tokens(), 2);
        assert_eq!(p.eos_ids(), &[0, 3]);
    }
}
