//! The mixture weights and their application to logits.

use serde::{Deserialize, Serialize};

use crate::MixError;

/// The largest `|lambda|` and `|1 - sum(lambda)|` a mixture accepts.
///
/// Logits are mixed in `f32` (largest finite value about `3.4e38`). With every coefficient
/// within `1e6`, a logit (or weight) would have to exceed `3e32` in magnitude before one term
/// overflows; real logits stay below `1e4`. Past the limit, `lambda = 1e39` is infinite once
/// cast to `f32` and the mixture becomes NaN. DeRa's useful range is about `[-2, 10]`.
pub const MAX_COEFFICIENT: f64 = 1e6;

/// Weights `lambda_i` of K aligned models against one reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mixture {
    lambdas: Vec<f64>,
}

impl Mixture {
    /// A mixture with one weight per aligned model; every weight, and the reference
    /// coefficient `1 - sum(lambda)`, must be finite and within [`MAX_COEFFICIENT`]. An empty
    /// vector is the reference model alone.
    pub fn new(lambdas: Vec<f64>) -> Result<Self, MixError> {
        check_lambdas(&lambdas)?;
        Ok(Self { lambdas })
    }

    /// The single-reward mixture `lambda * h_aligned + (1 - lambda) * h_ref`.
    pub fn single(lambda: f64) -> Result<Self, MixError> {
        Self::new(vec![lambda])
    }

    /// The same `lambda` for each of `k` aligned models (what one value means for several:
    /// every reward at that strength, `1 - k * lambda` on the reference).
    pub fn uniform(lambda: f64, k: usize) -> Result<Self, MixError> {
        Self::new(vec![lambda; k])
    }

    /// The reference model alone (no aligned model).
    pub fn reference_only() -> Self {
        Self {
            lambdas: Vec::new(),
        }
    }

    /// The weights `lambda_i`.
    pub fn lambdas(&self) -> &[f64] {
        &self.lambdas
    }

    /// Number of aligned models K.
    pub fn num_aligned(&self) -> usize {
        self.lambdas.len()
    }

    /// Coefficients `[1 - sum lambda_i, lambda_1, ..., lambda_K]`, reference first.
    pub fn coefficients(&self) -> Vec<f64> {
        reference_first(&self.lambdas)
    }

    /// Coefficients as `f32`, the precision logits are mixed in.
    pub fn coefficients_f32(&self) -> Vec<f32> {
        self.coefficients().into_iter().map(|c| c as f32).collect()
    }

    /// Indices of the models (0 = reference, then aligned 1..K) whose `f32` coefficient is not
    /// exactly zero: the others add nothing to the mixture and need not be run.
    pub fn used_models(&self) -> Vec<usize> {
        self.coefficients_f32()
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c != 0.0)
            .map(|(j, _)| j)
            .collect()
    }
}

/// Checks lambdas as [`Mixture::new`] does: finite, and `|lambda_i|` and `|1 - sum(lambda)|`
/// at most [`MAX_COEFFICIENT`].
pub fn check_lambdas(lambdas: &[f64]) -> Result<(), MixError> {
    let limit = MAX_COEFFICIENT;
    for (index, &value) in lambdas.iter().enumerate() {
        if !value.is_finite() {
            return Err(MixError::NonFiniteLambda { index, value });
        }
        if value.abs() > limit {
            return Err(MixError::LambdaTooLarge {
                index,
                value,
                limit,
            });
        }
    }
    let value = 1.0 - lambdas.iter().sum::<f64>();
    if value.abs() > limit {
        return Err(MixError::CoefficientTooLarge { value, limit });
    }
    Ok(())
}

/// The coefficients `[1 - sum lambda_i, lambda_1, ..., lambda_K]` of `lambdas`, checked as
/// [`Mixture::new`] checks them: the one definition the logit mixture and the weight merge
/// (`dera-merge`) share.
pub fn coefficients(lambdas: &[f64]) -> Result<Vec<f64>, MixError> {
    check_lambdas(lambdas)?;
    Ok(reference_first(lambdas))
}

fn reference_first(lambdas: &[f64]) -> Vec<f64> {
    let sum: f64 = lambdas.iter().sum();
    std::iter::once(1.0 - sum)
        .chain(lambdas.iter().copied())
        .collect()
}

/// The KL strength `beta / lambda` that a single-reward mixture approximates (infinite at
/// `lambda = 0`, the reference model; negative for negative `lambda`).
pub fn effective_beta(beta: f64, lambda: f64) -> f64 {
    beta / lambda
}
