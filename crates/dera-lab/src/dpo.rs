//! Direct preference optimisation (paper Appendix C) against a frozen reference.
//!
//! Preference pairs are sampled from the reference with the [`dera`] engine (temperature 1,
//! every prompt's samples sharing one prefill) and ranked by a [`Reward`]: for each prompt, a
//! response with the higher reward is `chosen` and one with the lower `rejected`. The loss is
//! `-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request};
use dera_models::{HostWeights, Model, ModelConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::params::{AdamW, Params};
use crate::reward::Reward;
use crate::train::{Batch, lr_at, token_logprobs};

/// One preference triple, with the token ids it was sampled as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreferencePair {
    /// Prompt text.
    pub prompt: String,
    /// Preferred response text.
    pub chosen: String,
    /// Dispreferred response text.
    pub rejected: String,
    /// Prompt ids (EOT first).
    #[serde(default)]
    pub prompt_ids: Vec<u32>,
    /// Preferred response ids (a final EOT included when the sample ended).
    #[serde(default)]
    pub chosen_ids: Vec<u32>,
    /// Dispreferred response ids.
    #[serde(default)]
    pub rejected_ids: Vec<u32>,
}

/// Sampling settings for preference data.
#[derive(Debug, Clone)]
pub struct PairSampling {
    /// Samples per prompt.
    pub samples_per_prompt: usize,
    /// Most pairs kept per prompt.
    pub pairs_per_prompt: usize,
    /// Prompts per engine batch.
    pub prompts_per_batch: usize,
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Keep equally many pairs for every way a rejected response fails the reward (see
    /// [`Reward::failure`]): without it a length window's pairs are nearly all "too short"
    /// and DPO learns "longer", not "in the window".
    pub balance_failures: bool,
    /// Seed.
    pub seed: u64,
}

impl Default for PairSampling {
    fn default() -> Self {
        Self {
            samples_per_prompt: 6,
            pairs_per_prompt: 2,
            prompts_per_batch: 48,
            max_new_tokens: 96,
            balance_failures: true,
            seed: 0,
        }
    }
}

/// Samples responses to `prompts` from the realigner's reference (or any mixture) and forms
/// preference pairs under `reward`.
pub fn sample_pairs(
    engine: &Realigner,
    prompts: &[String],
    reward: &Reward,
    ps: &PairSampling,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<PreferencePair>> {
    let tok = engine.tokenizer()?;
    let mut rng = ChaCha8Rng::seed_from_u64(ps.seed);
    let mut pairs: Vec<(&'static str, PreferencePair)> = Vec::new();
    let mut by_mode: BTreeMap<&'static str, usize> = BTreeMap::new();
    let decoding = Decoding {
        max_new_tokens: ps.max_new_tokens,
        seed: ps.seed,
        ..Decoding::default()
    };
    let mixture = Mixture::new(vec![0.0; engine.num_aligned()])
        .map_err(|e| LabError::Other(e.to_string()))?;
    for (bi, chunk) in prompts.chunks(ps.prompts_per_batch).enumerate() {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| tok.encode(p))
            .collect::<Result<_, _>>()?;
        let requests: Vec<Request> = ids
            .iter()
            .flat_map(|p| {
                (0..ps.samples_per_prompt).map(|_| Request {
                    prompt_ids: p.clone(),
                    mixture: mixture.clone(),
                    seed: None,
                })
            })
            .collect();
        let opts = GenerateOptions::new(Decoding {
            seed: ps.seed.wrapping_add(1_000_003 * bi as u64),
            ..decoding.clone()
        });
        let gens = engine.generate(&requests, &opts, |_| {})?;
        for (pi, (prompt, pids)) in chunk.iter().zip(&ids).enumerate() {
            let group = &gens[pi * ps.samples_per_prompt..(pi + 1) * ps.samples_per_prompt];
            let mut good: Vec<usize> = Vec::new();
            // Rejected candidates by failure mode, modes in a fixed order.
            let mut bad: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
            for (i, g) in group.iter().enumerate() {
                if g.tokens.is_empty() {
                    continue;
                }
                match reward.failure(&g.text) {
                    None => good.push(i),
                    Some(mode) => bad.entry(mode).or_default().push(i),
                }
            }
            good.shuffle(&mut rng);
            for v in bad.values_mut() {
                v.shuffle(&mut rng);
            }
            // Rarest failure mode first, then round robin, so a prompt's pairs cover the modes.
            let mut modes: Vec<&'static str> = bad.keys().copied().collect();
            modes.sort_by_key(|m| (by_mode.get(m).copied().unwrap_or(0), *m));
            let mut rejected = Vec::new();
            for round in 0.. {
                let before = rejected.len();
                for m in &modes {
                    if let Some(&l) = bad[m].get(round) {
                        rejected.push((*m, l));
                    }
                }
                if rejected.len() == before {
                    break;
                }
            }
            for (&w, &(mode, l)) in good.iter().zip(&rejected).take(ps.pairs_per_prompt) {
                *by_mode.entry(mode).or_default() += 1;
                pairs.push((
                    mode,
                    PreferencePair {
                        prompt: prompt.clone(),
                        chosen: group[w].text.clone(),
                        rejected: group[l].text.clone(),
                        prompt_ids: pids.clone(),
                        chosen_ids: group[w].tokens.clone(),
                        rejected_ids: group[l].tokens.clone(),
                    },
                ));
            }
        }
        progress((bi + 1) * ps.prompts_per_batch, prompts.len());
    }
    Ok(if ps.balance_failures {
        balance(pairs, &by_mode)
    } else {
        pairs.into_iter().map(|(_, p)| p).collect()
    })
}

/// Keeps, in order, at most as many pairs of each failure mode as the rarest mode has.
fn balance(
    pairs: Vec<(&'static str, PreferencePair)>,
    by_mode: &BTreeMap<&'static str, usize>,
) -> Vec<PreferencePair> {
    let cap = by_mode.values().copied().min().unwrap_or(0);
    let mut kept: BTreeMap<&'static str, usize> = BTreeMap::new();
    pairs
        .into_iter()
        .filter(|(mode, _)| {
            let k = kept.entry(mode).or_default();
            *k += 1;
            *k <= cap
        })
        .map(|(_, p)| p)
        .collect()
}

/// Writes pairs as JSONL.
pub fn write_pairs(path: &Path, pairs: &[PreferencePair]) -> Result<()> {
    let mut s = String::new();
    for p in pairs {
        s.push_str(&serde_json::to_string(p).unwrap());
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| LabError::io(path, e))
}

/// DPO settings.
#[derive(Debug, Clone)]
pub struct DpoConfig {
    /// KL strength.
    pub beta: f64,
    /// Pairs per step.
    pub batch_pairs: usize,
    /// Passes over the pairs.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Shuffling seed.
    pub seed: u64,
    /// Per-pair probability that `chosen` is preferred; `None` for hard labels (1 for every
    /// pair, the original DPO loss). See [`bradley_terry_labels`].
    pub labels: Option<Vec<f64>>,
}

/// Soft labels from a programmatic reward: the Bradley-Terry probability
/// `sigmoid(r(chosen) - r(rejected))` of each pair.
///
/// With hard labels a pair's loss falls forever as its margin grows, so on separable preferences
/// (a programmatic reward) the trained policy's log-ratio is set by the optimiser's step count,
/// hardly by `beta`. With these labels the per-pair optimum is the finite margin
/// `beta * h = r(chosen) - r(rejected)`, the one the KL-regularised optimum
/// `pi_ref * exp(r / beta) / Z` implies, so `beta` sets the alignment strength as DeRa assumes.
pub fn bradley_terry_labels(pairs: &[PreferencePair], reward: &Reward) -> Vec<f64> {
    pairs
        .iter()
        .map(|p| {
            let d = reward.score(&p.chosen) - reward.score(&p.rejected);
            1.0 / (1.0 + (-d).exp())
        })
        .collect()
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            batch_pairs: 32,
            epochs: 2,
            lr: 5e-4,
            seed: 0,
            labels: None,
        }
    }
}

fn pair_batch(pairs: &[&PreferencePair]) -> Batch {
    let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(2 * pairs.len());
    let mut first = Vec::with_capacity(2 * pairs.len());
    for resp in [0, 1] {
        for p in pairs {
            let r = if resp == 0 {
                &p.chosen_ids
            } else {
                &p.rejected_ids
            };
            seqs.push(p.prompt_ids.iter().chain(r).copied().collect());
            first.push(p.prompt_ids.len());
        }
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    Batch::new(&refs, &first)
}

fn sequence_logprobs(model: &Model, batch: &Batch) -> Result<Tensor<1>> {
    let lp = token_logprobs(model, batch)?;
    let rows = batch.rows;
    Ok(lp.sum_dim(1).reshape([rows]))
}

/// Sequence log-probabilities of chosen then rejected responses of every pair under a frozen
/// model (no gradients), in batches of `batch_pairs`.
pub fn frozen_logprobs(
    cfg: &ModelConfig,
    dir: &Path,
    pairs: &[PreferencePair],
    batch_pairs: usize,
) -> Result<Vec<(f64, f64)>> {
    let ckpt = dera_checkpoint::Checkpoint::open(dir)?;
    let model = Model::new(cfg, &HostWeights::new(&ckpt, Device::flex()))?;
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_pairs) {
        let refs: Vec<&PreferencePair> = chunk.iter().collect();
        let lp = sequence_logprobs(&model, &pair_batch(&refs))?
            .try_into_vec_as::<f32>()
            .map_err(|e| LabError::Other(format!("{e:?}")))?;
        let n = chunk.len();
        out.extend((0..n).map(|i| (f64::from(lp[i]), f64::from(lp[n + i]))));
    }
    Ok(out)
}

/// One DPO step's statistics.
#[derive(Debug, Clone, Copy)]
pub struct DpoStep {
    /// Step index.
    pub step: usize,
    /// Total steps.
    pub total: usize,
    /// Mean loss.
    pub loss: f64,
    /// Fraction of pairs whose implicit reward ranks chosen above rejected.
    pub accuracy: f64,
    /// Seconds since the start.
    pub elapsed: f64,
}

/// Trains `params` (initialised from the reference) with DPO on `pairs`, whose reference
/// log-probabilities are `reference`.
pub fn dpo(
    cfg: &ModelConfig,
    params: &mut Params,
    pairs: &[PreferencePair],
    reference: &[(f64, f64)],
    dc: &DpoConfig,
    mut log: impl FnMut(DpoStep),
) -> Result<()> {
    if let Some(l) = dc.labels.as_ref().filter(|l| l.len() != pairs.len()) {
        return Err(LabError::Other(format!(
            "{} labels for {} preference pairs",
            l.len(),
            pairs.len()
        )));
    }
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(dc.seed);
    let steps_per_epoch = pairs.len().div_ceil(dc.batch_pairs);
    let total = steps_per_epoch * dc.epochs;
    let start = Instant::now();
    let mut step = 0;
    for _ in 0..dc.epochs {
        order.shuffle(&mut rng);
        for idx in order.chunks(dc.batch_pairs) {
            let chunk: Vec<&PreferencePair> = idx.iter().map(|&i| &pairs[i]).collect();
            let n = chunk.len();
            let batch = pair_batch(&chunk);
            let model = Model::new(cfg, params)?;
            let device = dera_models::burn::tensor::Device::clone(params_device(params));
            let lp = sequence_logprobs(&model, &batch)?;
            let pol_c = lp.clone().narrow(0, 0, n);
            let pol_r = lp.narrow(0, n, n);
            let ref_diff: Vec<f32> = idx
                .iter()
                .map(|&i| (reference[i].0 - reference[i].1) as f32)
                .collect();
            let ref_diff = Tensor::<1>::from_data(TensorData::new(ref_diff, [n]), &device);
            let margin = ((pol_c - pol_r) - ref_diff).mul_scalar(dc.beta);
            let m = margin
                .clone()
                .inner()
                .try_into_vec_as::<f32>()
                .map_err(|e| LabError::Other(format!("{e:?}")))?;
            let loss = match &dc.labels {
                None => log_sigmoid(margin).mean().neg(),
                Some(labels) => {
                    let p: Vec<f32> = idx.iter().map(|&i| labels[i] as f32).collect();
                    let p = Tensor::<1>::from_data(TensorData::new(p, [n]), &device);
                    let q = p.clone().neg().add_scalar(1.0);
                    (p * log_sigmoid(margin.clone()) + q * log_sigmoid(margin.neg()))
                        .mean()
                        .neg()
                }
            };
            let value = f64::from(loss.clone().inner().into_scalar::<f32>());
            let grads = loss.backward();
            let opt = AdamW {
                lr: lr_at(step, total, total / 10, dc.lr),
                weight_decay: 0.0,
                ..AdamW::default()
            };
            params.step(&grads, &opt);
            log(DpoStep {
                step,
                total,
                loss: value,
                accuracy: m.iter().filter(|&&x| x > 0.0).count() as f64 / n as f64,
                elapsed: start.elapsed().as_secs_f64(),
            });
            step += 1;
        }
    }
    Ok(())
}

fn params_device(p: &Params) -> &Device {
    dera_models::Weights::device(p)
}
