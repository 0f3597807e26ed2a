/// `v` as written (`2500000`), or in scientific notation from 1e7 on (`1e308`, not 309 digits).
fn compact(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e7 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Invalid mixtures and incompatible models.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixError {
    /// A weight is NaN or infinite.
    #[error("lambda[{index}] = {value} is not a finite number")]
    NonFiniteLambda {
        /// Position in the lambda vector (0 = first aligned model).
        index: usize,
        /// The value given.
        value: f64,
    },
    /// A weight is finite but so large that the `f32` mix of logits could overflow.
    #[error(
        "lambda[{index}] = {} is outside [-{limit}, {limit}]: larger weights overflow the f32 mix of logits",
        compact(*value)
    )]
    LambdaTooLarge {
        /// Position in the lambda vector (0 = first aligned model).
        index: usize,
        /// The value given.
        value: f64,
        /// [`crate::MAX_COEFFICIENT`].
        limit: f64,
    },
    /// The reference coefficient `1 - sum(lambda)` is beyond the limit (or not finite).
    #[error(
        "the reference coefficient 1 - sum(lambda) = {} is outside [-{limit}, {limit}]: it would overflow the f32 mix of logits",
        compact(*value)
    )]
    CoefficientTooLarge {
        /// `1 - sum(lambda)`.
        value: f64,
        /// [`crate::MAX_COEFFICIENT`].
        limit: f64,
    },
    /// There is nothing to mix.
    #[error("no models to mix")]
    Empty,
    /// Two models produce logits of different widths.
    #[error(
        "vocabulary mismatch: the reference has {reference} logits, aligned model {index} has {other}; \
         pass the truncate option to mix over the first {shared} entries (the tokenizer's vocabulary)"
    )]
    VocabMismatch {
        /// Width of the reference logits.
        reference: usize,
        /// Which aligned model (0-based).
        index: usize,
        /// Its width.
        other: usize,
        /// The width truncation would use.
        shared: usize,
    },
    /// The tokenizer's vocabulary is wider than some model's logits.
    #[error("the tokenizer has {tokenizer} entries but a model has only {narrowest} logits")]
    TokenizerTooLarge {
        /// Tokenizer vocabulary size.
        tokenizer: usize,
        /// The narrowest logit width.
        narrowest: usize,
    },
}
