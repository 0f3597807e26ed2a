//! Programmatic rewards, computed from the response text only.
//!
//! * `length:A-B` — the paper's length reward (eq. 10): `0` when the response has between `A`
//!   and `B` words (whitespace-separated, inclusive), else `-1`.
//! * `question` — `0` when the response contains a question mark, else `-1`.

use crate::error::{LabError, Result};

/// The words-in-range length reward's default range, used to align `aligned-length`.
pub const DEFAULT_LENGTH_RANGE: (usize, usize) = (25, 50);

/// [`DEFAULT_LENGTH_RANGE`] as a reward spec (`length` parses to the same reward).
pub const DEFAULT_LENGTH_SPEC: &str = "length:25-50";

/// A reward function over response text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reward {
    /// `0` if the number of words is in `min..=max`, else `-1`.
    Length {
        /// Fewest words.
        min: usize,
        /// Most words.
        max: usize,
    },
    /// `0` if the text contains `?`, else `-1`.
    Question,
}

impl Reward {
    /// The default length reward.
    pub fn default_length() -> Self {
        Reward::Length {
            min: DEFAULT_LENGTH_RANGE.0,
            max: DEFAULT_LENGTH_RANGE.1,
        }
    }

    /// The reward of `response`.
    pub fn score(&self, response: &str) -> f64 {
        let ok = match *self {
            Reward::Length { min, max } => (min..=max).contains(&word_count(response)),
            Reward::Question => response.contains('?'),
        };
        if ok { 0.0 } else { -1.0 }
    }

    /// How `response` fails this reward, or `None` when it earns the full reward: `"short"` or
    /// `"long"` for the length reward, `"no-question"` for the question reward. Preference
    /// pairs are balanced over these, so DPO learns both edges of a length window.
    pub fn failure(&self, response: &str) -> Option<&'static str> {
        match *self {
            Reward::Length { min, max } => {
                let n = word_count(response);
                if n < min {
                    Some("short")
                } else if n > max {
                    Some("long")
                } else {
                    None
                }
            }
            Reward::Question => (!response.contains('?')).then_some("no-question"),
        }
    }

    /// The spec string this reward parses from.
    pub fn name(&self) -> String {
        match self {
            Reward::Length { min, max } => format!("length:{min}-{max}"),
            Reward::Question => "question".into(),
        }
    }

    /// Parses `length:A-B`, `length` (the default range) or `question`.
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.trim();
        if s == "question" {
            return Ok(Reward::Question);
        }
        if s == "length" {
            return Ok(Reward::default_length());
        }
        let Some(range) = s.strip_prefix("length:") else {
            return Err(LabError::spec(
                "reward",
                spec,
                "expected `length:MIN-MAX`, `length` or `question`",
            ));
        };
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| LabError::spec("reward", spec, "expected MIN-MAX"))?;
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| LabError::spec("reward", spec, e.to_string()))
        };
        let (min, max) = (num(a)?, num(b)?);
        if min > max {
            return Err(LabError::spec("reward", spec, "MIN exceeds MAX"));
        }
        Ok(Reward::Length { min, max })
    }

    /// Parses a comma-separated list of rewards.
    pub fn parse_list(spec: &str) -> Result<Vec<Self>> {
        spec.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Reward::parse)
            .collect()
    }
}

/// Number of whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_reward_is_inclusive() {
        let r = Reward::Length { min: 2, max: 3 };
        assert_eq!(r.score("one"), -1.0);
        assert_eq!(r.score(" one  two"), 0.0);
        assert_eq!(r.score("one two\nthree"), 0.0);
        assert_eq!(r.score("one two three four"), -1.0);
        assert_eq!(r.score(""), -1.0);
    }

    #[test]
    fn failure_modes_agree_with_the_score() {
        let r = Reward::Length { min: 2, max: 3 };
        assert_eq!(r.failure("one"), Some("short"));
        assert_eq!(r.failure("one two"), None);
        assert_eq!(r.failure("a b c d"), Some("long"));
        assert_eq!(Reward::Question.failure("so?"), None);
        assert_eq!(Reward::Question.failure("so."), Some("no-question"));
        for text in ["", "a", "a b", "a b c", "a b c d e?", "?"] {
            for r in [r, Reward::Question] {
                assert_eq!(
                    r.failure(text).is_none(),
                    r.score(text) == 0.0,
                    "{r:?} {text:?}"
                );
            }
        }
    }

    #[test]
    fn question_reward() {
        assert_eq!(Reward::Question.score("why not?"), 0.0);
        assert_eq!(Reward::Question.score("because."), -1.0);
    }

    #[test]
    fn default_spec_matches_the_default_range() {
        assert_eq!(
            Reward::parse(DEFAULT_LENGTH_SPEC).unwrap(),
            Reward::default_length()
        );
        assert_eq!(Reward::default_length().name(), DEFAULT_LENGTH_SPEC);
    }

    #[test]
    fn parsing() {
        assert_eq!(
            Reward::parse("length:40-50").unwrap(),
            Reward::Length { min: 40, max: 50 }
        );
        assert_eq!(Reward::parse("question").unwrap(), Reward::Question);
        assert_eq!(Reward::parse_list("length:1-2,question").unwrap().len(), 2);
        assert!(Reward::parse("length:5-2").is_err());
        assert!(Reward::parse("length:x-2").is_err());
        assert!(Reward::parse("happiness").is_err());
        for r in [Reward::Question, Reward::Length { min: 3, max: 9 }] {
            assert_eq!(Reward::parse(&r.name()).unwrap(), r);
        }
    }
}
