//! Supervised training (pretraining/SFT) on the corpus: next-token cross-entropy over whole
//! fortunes, `<|endoftext|> fortune <|endoftext|>`, in length-bucketed padded batches.

use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use dera_models::{CausalLm, Model, ModelConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::params::{AdamW, Params};
use crate::tokenizer::EOT_ID;

/// A right-padded batch: `rows` sequences of `len` tokens and a weight per predicted token.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, row-major `[rows, len]`.
    pub tokens: Vec<u32>,
    /// Weights of the `len - 1` predictions of each row (`1` counts, `0` is ignored).
    pub weights: Vec<f32>,
    /// Rows.
    pub rows: usize,
    /// Tokens per row.
    pub len: usize,
}

impl Batch {
    /// Pads `seqs` with EOT; `first_target[r]` is the first position of row `r` whose token is
    /// scored (`1` scores everything after the first token).
    pub fn new(seqs: &[&[u32]], first_target: &[usize]) -> Self {
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(2).max(2);
        let rows = seqs.len();
        let mut tokens = Vec::with_capacity(rows * len);
        let mut weights = Vec::with_capacity(rows * (len - 1));
        for (s, &first) in seqs.iter().zip(first_target) {
            tokens.extend_from_slice(s);
            tokens.extend(std::iter::repeat_n(EOT_ID, len - s.len()));
            // Prediction j predicts token j + 1.
            weights.extend((0..len - 1).map(|j| {
                let target = j + 1;
                if target >= first.max(1) && target < s.len() {
                    1.0
                } else {
                    0.0
                }
            }));
        }
        Self {
            tokens,
            weights,
            rows,
            len,
        }
    }

    /// Number of scored tokens.
    pub fn scored(&self) -> f32 {
        self.weights.iter().sum()
    }
}

/// Weighted log-probabilities `[rows, len - 1]` of each row's next tokens under `model`.
pub fn token_logprobs(model: &Model, batch: &Batch) -> Result<Tensor<2>> {
    let device = model.device().clone();
    let (b, t) = (batch.rows, batch.len);
    let mut cache = model.new_cache();
    let logits = model.forward(&batch.tokens, b, &mut cache, true)?;
    let v = logits.dims()[2];
    let lp = log_softmax(logits.narrow(1, 0, t - 1), 2);
    let targets: Vec<i64> = (0..b)
        .flat_map(|r| (1..t).map(move |j| (r, j)))
        .map(|(r, j)| i64::from(batch.tokens[r * t + j]))
        .collect();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, t - 1, 1]), &device);
    let picked = lp.gather(2, targets).reshape([b, t - 1]);
    let _ = v;
    let w = Tensor::<2>::from_data(TensorData::new(batch.weights.clone(), [b, t - 1]), &device);
    Ok(picked * w)
}

/// Mean negative log-likelihood per scored token.
pub fn nll(model: &Model, batch: &Batch) -> Result<Tensor<1>> {
    let lp = token_logprobs(model, batch)?;
    Ok(lp.sum().neg().div_scalar(batch.scored().max(1.0)))
}

/// SFT settings.
#[derive(Debug, Clone)]
pub struct SftConfig {
    /// Passes over the data.
    pub epochs: f64,
    /// Token budget per batch (rows * padded length).
    pub batch_tokens: usize,
    /// Peak learning rate (linear warm-up, cosine decay to 10%).
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Shuffling seed.
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            epochs: 1.0,
            batch_tokens: 4096,
            lr: 3e-3,
            warmup: 50,
            seed: 0,
        }
    }
}

/// Groups sequences of similar length into batches of at most `batch_tokens` padded tokens.
pub fn bucket(seqs: &[Vec<u32>], batch_tokens: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| (seqs[i].len(), i));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        let len = seqs[i].len();
        if !cur.is_empty() && (cur.len() + 1) * len > batch_tokens {
            batches.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    batches
}

/// Learning rate at `step` of `total`: linear warm-up, cosine decay to 10% of `peak`.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let p = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

/// Trains `params` on `seqs` (each `EOT text EOT`), logging every `log_every` steps.
pub fn sft(
    cfg: &ModelConfig,
    params: &mut Params,
    seqs: &[Vec<u32>],
    sc: &SftConfig,
    mut log: impl FnMut(usize, usize, f64, f64),
) -> Result<Vec<f64>> {
    let mut batches = Vec::new();
    let whole = sc.epochs.ceil() as usize;
    for e in 0..whole {
        let mut b = bucket(seqs, sc.batch_tokens, sc.seed + e as u64);
        if e + 1 == whole && sc.epochs.fract() > 0.0 {
            b.truncate((b.len() as f64 * sc.epochs.fract()).ceil() as usize);
        }
        batches.extend(b);
    }
    let total = batches.len();
    let mut losses = Vec::with_capacity(total);
    let start = Instant::now();
    for (step, idx) in batches.iter().enumerate() {
        let rows: Vec<&[u32]> = idx.iter().map(|&i| seqs[i].as_slice()).collect();
        let batch = Batch::new(&rows, &vec![1; rows.len()]);
        let model = Model::new(cfg, params)?;
        let loss = nll(&model, &batch)?;
        let value = f64::from(loss.clone().inner().into_scalar::<f32>());
        let grads = loss.backward();
        let opt = AdamW {
            lr: lr_at(step, total, sc.warmup, sc.lr),
            ..AdamW::default()
        };
        params.step(&grads, &opt);
        losses.push(value);
        log(step, total, value, start.elapsed().as_secs_f64());
    }
    Ok(losses)
}

/// A fresh autodiff-capable CPU device.
pub fn train_device() -> Device {
    Device::flex().autodiff()
}
