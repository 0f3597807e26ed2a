//! Log-probabilities and KL of the mixture.

use dera_logits::softmax::log_softmax;
use dera_mix::Mixture;
use dera_models::burn::tensor::{Int, Tensor, TensorData, activation};
use serde::{Deserialize, Serialize};

use crate::realigner::{check_finite, to_rows};
use crate::session::top_n;
use crate::{DeraError, Realigner, TokenLogprob};

/// Log-softmax rows, one per position.
pub type LogProbRows = Vec<Vec<f32>>;

/// A response scored under a mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// `log p_mix(y_t | x, y_<t)` for every response token.
    pub token_logprobs: Vec<f64>,
    /// Their sum, `log p_mix(y | x)`.
    pub total_logprob: f64,
    /// `KL(p_mix || p_ref)` of the next-token distributions at every response position.
    pub kl_to_reference: Vec<f64>,
    /// Their sum: the sequence-level KL estimate along this response.
    pub total_kl: f64,
}

impl Realigner {
    /// Log-probabilities of the next token after `prompt_ids` under `mixture`.
    pub fn next_token_logprobs(
        &self,
        prompt_ids: &[u32],
        mixture: &Mixture,
    ) -> Result<Vec<f32>, DeraError> {
        self.check_mixture(mixture)?;
        if prompt_ids.is_empty() {
            return Err(DeraError::Request("empty prompt".into()));
        }
        self.check_context("the prompt", prompt_ids.len(), 0)?;
        // Models with a zero coefficient add nothing: skip their forward pass.
        let active = mixture.used_models();
        let logits = self.forward_each(&active, prompt_ids, false)?;
        let rows = to_rows(self.mix_all(logits, &active, &[mixture]))?;
        check_finite(&rows, |_| "the next token after the prompt".into())?;
        Ok(rows.iter().flat_map(|r| log_softmax(r)).collect())
    }

    /// Logits of the mixture and of the reference at every response position, `[n, width]`
    /// each on the device (row `t` predicts `response_ids[t]`), one forward pass per model.
    fn trajectory_logits(
        &self,
        prompt_ids: &[u32],
        response_ids: &[u32],
        mixture: &Mixture,
    ) -> Result<(Tensor<2>, Tensor<2>), DeraError> {
        self.check_mixture(mixture)?;
        if prompt_ids.is_empty() || response_ids.is_empty() {
            return Err(DeraError::Request(
                "scoring needs a non-empty prompt and response".into(),
            ));
        }
        self.check_context("prompt + response", prompt_ids.len(), response_ids.len())?;
        let all: Vec<u32> = prompt_ids.iter().chain(response_ids).copied().collect();
        let (p, n) = (prompt_ids.len(), response_ids.len());
        // The reference is always needed (it is the KL baseline); other models only where their
        // coefficient is non-zero.
        let mut active = mixture.used_models();
        if active.first() != Some(&0) {
            active.insert(0, 0);
        }
        // Positions p-1 .. p+n-2 predict the response tokens.
        let logits: Vec<Tensor<2>> = self
            .forward_each(&active, &all, true)?
            .into_iter()
            .map(|h| h.narrow(0, p - 1, n))
            .collect();
        let reference = logits[0].clone().narrow(1, 0, self.width);
        let mixtures = vec![mixture; n];
        let mixed = self.mix_all(logits, &active, &mixtures);
        Ok((mixed, reference))
    }

    /// Errors naming the first position where `reference` or `mixed` is not finite.
    fn check_trajectory(&self, mixed: &Tensor<2>, reference: &Tensor<2>) -> Result<(), DeraError> {
        let bad = |t: &Tensor<2>| {
            t.clone()
                .is_nan()
                .bool_or(t.clone().is_inf())
                .any()
                .into_scalar()
        };
        if bad(reference) || bad(mixed) {
            check_finite(&to_rows(reference.clone())?, |t| {
                format!("reference logits, response token {t}")
            })?;
            check_finite(&to_rows(mixed.clone())?, |t| format!("response token {t}"))?;
        }
        Ok(())
    }

    /// Log-softmax rows of the mixture and of the reference at every response position
    /// (row `t` predicts `response_ids[t]`), computed in one forward pass per model.
    pub fn trajectory_log_probs(
        &self,
        prompt_ids: &[u32],
        response_ids: &[u32],
        mixture: &Mixture,
    ) -> Result<(LogProbRows, LogProbRows), DeraError> {
        let (mixed, reference) = self.trajectory_logits(prompt_ids, response_ids, mixture)?;
        let reference = to_rows(reference)?;
        let mixed = to_rows(mixed)?;
        check_finite(&reference, |t| {
            format!("reference logits, response token {t}")
        })?;
        check_finite(&mixed, |t| format!("response token {t}"))?;
        Ok((
            mixed.iter().map(|r| log_softmax(r)).collect(),
            reference.iter().map(|r| log_softmax(r)).collect(),
        ))
    }

    /// Log-probability under `mixture` of every token of `ids` after the first, each given the
    /// tokens before it (what OpenAI's `echo` with `logprobs` reports for a prompt), with the
    /// `top` most likely tokens of each position; one forward pass per model. Empty for a
    /// one-token sequence.
    pub fn prompt_logprobs(
        &self,
        ids: &[u32],
        mixture: &Mixture,
        top: usize,
    ) -> Result<Vec<TokenLogprob>, DeraError> {
        if ids.len() < 2 {
            self.check_mixture(mixture)?;
            return Ok(Vec::new());
        }
        let (mixed, _) = self.trajectory_log_probs(&ids[..1], &ids[1..], mixture)?;
        Ok(mixed
            .iter()
            .zip(&ids[1..])
            .map(|(row, &token)| TokenLogprob {
                token,
                logprob: row
                    .get(token as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY),
                top: top_n(row, top),
                kl_to_reference: None,
            })
            .collect())
    }

    /// Scores `response_ids` after `prompt_ids`: per-token log-probabilities under the mixture
    /// and per-token `KL(mixture || reference)`. Everything is computed on the device; only
    /// the `2n` values come back.
    pub fn score(
        &self,
        prompt_ids: &[u32],
        response_ids: &[u32],
        mixture: &Mixture,
    ) -> Result<Score, DeraError> {
        if let Some(&y) = response_ids.iter().find(|&&y| y as usize >= self.width) {
            return Err(DeraError::Request(format!(
                "response token {y} is outside the mixed vocabulary of {}",
                self.width
            )));
        }
        let (mixed, reference) = self.trajectory_logits(prompt_ids, response_ids, mixture)?;
        self.check_trajectory(&mixed, &reference)?;
        let n = response_ids.len();
        let lm = activation::log_softmax(mixed, 1);
        let lr = activation::log_softmax(reference, 1);
        let ys: Vec<i64> = response_ids.iter().map(|&y| i64::from(y)).collect();
        let ys = Tensor::<2, Int>::from_data(TensorData::new(ys, [n, 1]), &self.device);
        let chosen = lm.clone().gather(1, ys).reshape([n]);
        let kl = (lm.clone().exp() * (lm - lr)).sum_dim(1).reshape([n]);
        let values = Tensor::cat(vec![chosen, kl], 0)
            .try_into_vec_as::<f32>()
            .map_err(|e| dera_models::ModelError::Readback(format!("{e:?}")))?;
        let (lp, kl) = values.split_at(n);
        let token_logprobs: Vec<f64> = lp.iter().map(|&x| f64::from(x)).collect();
        let kl_to_reference: Vec<f64> = kl.iter().map(|&x| f64::from(x)).collect();
        Ok(Score {
            total_logprob: token_logprobs.iter().sum(),
            total_kl: kl_to_reference.iter().sum(),
            token_logprobs,
            kl_to_reference,
        })
    }
}

/// `KL(p || q)` of two distributions given as log-probabilities (terms with `p = 0` vanish).
pub fn kl_divergence(log_p: &[f32], log_q: &[f32]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .filter(|(a, _)| a.is_finite())
        .map(|(&a, &b)| f64::from(a).exp() * (f64::from(a) - f64::from(b)))
        .sum()
}
