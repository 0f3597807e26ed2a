//! The paper's pairwise accuracy (eq. 14) of the DeRa mixture.
//!
//! For a triple `(x, y_w, y_l)` the mixture's implicit reward is
//! `beta * log(p_mix(y | x) / p_ref(y | x))`; the triple counts as correct when it is larger for
//! `y_w`. Responses are scored as complete: an EOS is appended to each response text.
//! Every model's logits are computed once per triple; each lambda only re-mixes them.

use std::path::Path;

use dera::Realigner;
use dera::dera_logits::softmax::log_softmax;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// One preference triple of a prefs file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Triple {
    /// Prompt text.
    pub prompt: String,
    /// Preferred response.
    pub chosen: String,
    /// Dispreferred response.
    pub rejected: String,
}

/// Reads `{prompt, chosen, rejected}` JSONL.
pub fn read_triples(path: &Path) -> Result<Vec<Triple>> {
    crate::corpus::read_jsonl(path)
}

/// Accuracy at one lambda vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// The lambda vector.
    pub lambdas: Vec<f64>,
    /// Fraction of triples ranked correctly (a tie counts one half, so lambda = 0 gives 0.5).
    pub accuracy: f64,
    /// Mean implicit-reward margin `log-ratio(chosen) - log-ratio(rejected)` (nats).
    pub mean_margin: f64,
    /// Number of triples.
    pub triples: usize,
}

/// Per-model logits rows `[model][position][vocab]` predicting `response` after `prompt`.
pub fn model_logits(
    engine: &Realigner,
    prompt: &[u32],
    response: &[u32],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let all: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let (p, n) = (prompt.len(), response.len());
    let mut out = Vec::with_capacity(engine.models().len());
    for m in engine.models() {
        let mut cache = m.new_cache();
        let logits = m.forward(&all, 1, &mut cache, true)?;
        let v = logits.dims()[2];
        let flat = logits
            .reshape([all.len(), v])
            .narrow(0, p - 1, n)
            .try_into_vec_as::<f32>()
            .map_err(|e| LabError::Other(format!("{e:?}")))?;
        out.push(
            flat.chunks_exact(v)
                .map(|r| r[..engine.width()].to_vec())
                .collect(),
        );
    }
    Ok(out)
}

/// `(log p_mix(response), log p_ref(response))` for each lambda vector, from [`model_logits`].
pub fn log_ratios(logits: &[Vec<Vec<f32>>], response: &[u32], grid: &[Vec<f64>]) -> Vec<f64> {
    let n = response.len();
    let reference: f64 = (0..n)
        .map(|t| f64::from(log_softmax(&logits[0][t])[response[t] as usize]))
        .sum();
    grid.iter()
        .map(|l| {
            let c0 = 1.0 - l.iter().sum::<f64>();
            let coefs: Vec<f64> = std::iter::once(c0).chain(l.iter().copied()).collect();
            let mut total = 0.0;
            for t in 0..n {
                let v = logits[0][t].len();
                let mut row = vec![0f32; v];
                for (j, c) in coefs.iter().enumerate() {
                    for (o, &x) in row.iter_mut().zip(&logits[j][t]) {
                        *o += (*c as f32) * x;
                    }
                }
                total += f64::from(log_softmax(&row)[response[t] as usize]);
            }
            total - reference
        })
        .collect()
}

/// Pairwise accuracy of the mixture at every lambda vector of `grid`.
pub fn evaluate(
    engine: &Realigner,
    triples: &[Triple],
    grid: &[Vec<f64>],
    mut progress: impl FnMut(),
) -> Result<Vec<Accuracy>> {
    for l in grid {
        if l.len() != engine.num_aligned() {
            return Err(LabError::Other(format!(
                "lambda vector {l:?} has {} entries for {} aligned models",
                l.len(),
                engine.num_aligned()
            )));
        }
    }
    let tok = engine.tokenizer()?;
    let eos = *engine
        .eos_token_ids()
        .first()
        .ok_or_else(|| LabError::Other("the reference has no EOS id".into()))?;
    let mut correct = vec![0f64; grid.len()];
    let mut margin = vec![0f64; grid.len()];
    for t in triples {
        let prompt = tok.encode(&t.prompt)?;
        let ratio = |text: &str| -> Result<Vec<f64>> {
            let mut ids = tok.encode_with(text, false)?;
            ids.push(eos);
            let logits = model_logits(engine, &prompt, &ids)?;
            Ok(log_ratios(&logits, &ids, grid))
        };
        let (w, l) = (ratio(&t.chosen)?, ratio(&t.rejected)?);
        for i in 0..grid.len() {
            if w[i] > l[i] {
                correct[i] += 1.0;
            } else if w[i] == l[i] {
                correct[i] += 0.5;
            }
            margin[i] += w[i] - l[i];
        }
        progress();
    }
    let n = triples.len().max(1) as f64;
    Ok(grid
        .iter()
        .enumerate()
        .map(|(i, l)| Accuracy {
            lambdas: l.clone(),
            accuracy: correct[i] / n,
            mean_margin: margin[i] / n,
            triples: triples.len(),
        })
        .collect())
}
