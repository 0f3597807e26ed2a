//! Lambda sweeps: sample the DeRa mixture over a lambda grid and measure reward, length and
//! KL to the reference per lambda.
//!
//! Every prompt is decoded as one engine batch holding all lambdas and samples, so the prompt
//! prefill is shared. Sample `j` of a prompt uses the same seed at every lambda (common random
//! numbers), which makes the curves smoother. `--shard i/n` keeps prompts `p` with
//! `p % n == i`; [`merge`] joins shard outputs.

use std::collections::BTreeMap;
use std::path::Path;

use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, SamplingOptions};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::reward::{Reward, word_count};

/// Parses one axis: `start:stop:step` (inclusive of both ends) or a comma list.
///
/// Values are computed as `start + i * step` and rounded to 12 decimals, so `0:1:0.1` gives
/// exactly `0.3`, not `0.30000000000000004`.
pub fn parse_axis(spec: &str) -> Result<Vec<f64>> {
    let s = spec.trim();
    let num = |x: &str| -> Result<f64> {
        let v: f64 = x.trim().parse().map_err(|e: std::num::ParseFloatError| {
            LabError::spec("lambda grid", spec, e.to_string())
        })?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(LabError::spec("lambda grid", spec, "values must be finite"))
        }
    };
    if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        let [a, b, c] = parts[..] else {
            return Err(LabError::spec(
                "lambda grid",
                spec,
                "expected start:stop:step",
            ));
        };
        let (start, stop, step) = (num(a)?, num(b)?, num(c)?);
        if step <= 0.0 {
            return Err(LabError::spec("lambda grid", spec, "step must be positive"));
        }
        if stop < start {
            return Err(LabError::spec("lambda grid", spec, "stop is below start"));
        }
        let n = (stop - start) / step;
        let k = n.round();
        if (n - k).abs() > 1e-6 * n.max(1.0) {
            return Err(LabError::spec(
                "lambda grid",
                spec,
                "stop - start is not a whole number of steps",
            ));
        }
        if k > 100_000.0 {
            return Err(LabError::spec(
                "lambda grid",
                spec,
                "more than 100000 values",
            ));
        }
        let k = k as usize;
        Ok((0..=k)
            .map(|i| {
                if i == k {
                    stop
                } else {
                    round12(start + i as f64 * step)
                }
            })
            .collect())
    } else {
        let v: Vec<f64> = s
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(num)
            .collect::<Result<_>>()?;
        if v.is_empty() {
            return Err(LabError::spec("lambda grid", spec, "no values"));
        }
        Ok(v)
    }
}

fn round12(x: f64) -> f64 {
    let r = (x * 1e12).round() / 1e12;
    if r == 0.0 { 0.0 } else { r }
}

/// Most lambda vectors in a grid (the product of its axes).
pub const MAX_GRID: usize = 10_000;
/// Most sequences decoded together for one prompt (lambda vectors x samples): every one holds a
/// KV cache per model.
pub const MAX_BATCH: usize = 16_384;

/// Checks a sweep's size before anything loads: at least one sample, and at most
/// [`MAX_BATCH`] sequences per prompt.
pub fn check_size(grid: usize, samples: usize) -> Result<()> {
    if samples == 0 {
        return Err(LabError::spec("samples", "0", "need at least one sample"));
    }
    match grid.checked_mul(samples) {
        Some(n) if n <= MAX_BATCH => Ok(()),
        n => Err(LabError::spec(
            "sweep size",
            &format!("{grid} lambda vectors x {samples} samples"),
            format!(
                "{} sequences per prompt batch; at most {MAX_BATCH} (use fewer lambdas or samples)",
                n.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string())
            ),
        )),
    }
}

/// The lambda vectors of a sweep over `k` aligned models: `spec` is one axis used for every
/// model, or `k` axes separated by `;`; the grid is their Cartesian product (first model
/// slowest). At most [`MAX_GRID`] vectors, checked before the grid is built.
pub fn parse_grid(spec: &str, k: usize) -> Result<Vec<Vec<f64>>> {
    if k == 0 {
        return Err(LabError::spec("lambda grid", spec, "no aligned models"));
    }
    let axes: Vec<&str> = spec.split(';').collect();
    let axes: Vec<Vec<f64>> = match axes.len() {
        1 => vec![parse_axis(axes[0])?; k],
        n if n == k => axes.iter().map(|a| parse_axis(a)).collect::<Result<_>>()?,
        n => {
            return Err(LabError::spec(
                "lambda grid",
                spec,
                format!("{n} axes for {k} aligned models"),
            ));
        }
    };
    let size = axes
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.len()))
        .filter(|&n| n <= MAX_GRID);
    if size.is_none() {
        let dims: Vec<String> = axes.iter().map(|a| a.len().to_string()).collect();
        let total = axes.iter().map(|a| a.len() as f64).product::<f64>();
        return Err(LabError::spec(
            "lambda grid",
            spec,
            format!(
                "{} = {total} lambda vectors; at most {MAX_GRID}",
                dims.join(" x ")
            ),
        ));
    }
    let mut grid: Vec<Vec<f64>> = vec![Vec::new()];
    for axis in &axes {
        grid = grid
            .into_iter()
            .flat_map(|prefix| {
                axis.iter().map(move |&x| {
                    let mut v = prefix.clone();
                    v.push(x);
                    v
                })
            })
            .collect();
    }
    Ok(grid)
}

/// A shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which part, from 0.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl Shard {
    /// The whole sweep.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n` with `i < n`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (a, b) = spec
            .split_once('/')
            .ok_or_else(|| LabError::spec("shard", spec, "expected i/n"))?;
        let p = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| LabError::spec("shard", spec, e.to_string()))
        };
        let (index, count) = (p(a)?, p(b)?);
        if count == 0 || index >= count {
            return Err(LabError::spec("shard", spec, "need 0 <= i < n"));
        }
        Ok(Self { index, count })
    }

    /// The indices of `0..len` this shard owns: `p % count == index`.
    pub fn indices(&self, len: usize) -> Vec<usize> {
        (self.index..len).step_by(self.count).collect()
    }
}

/// One sampled response of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Index of the prompt in the prompts file.
    pub prompt_index: usize,
    /// The prompt text.
    pub prompt: String,
    /// The lambda vector.
    pub lambdas: Vec<f64>,
    /// Sample number within (prompt, lambda).
    pub sample: usize,
    /// Response text.
    pub response: String,
    /// Generated tokens (a final EOS included).
    pub tokens: usize,
    /// Whitespace-separated words of the response.
    pub words: usize,
    /// Reward name -> value.
    pub rewards: BTreeMap<String, f64>,
    /// Sequence KL(mixture || reference) along the response (sum of per-token KL).
    pub kl: f64,
    /// `log p_mix(response | prompt)`.
    pub logprob: f64,
    /// Why decoding stopped (`eos` or `length`).
    pub finish_reason: String,
}

/// Averages over the samples of one lambda vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambdaSummary {
    /// The lambda vector.
    pub lambdas: Vec<f64>,
    /// Number of samples.
    pub samples: usize,
    /// Mean reward per reward name.
    pub mean_reward: BTreeMap<String, f64>,
    /// Mean response length in words.
    pub mean_words: f64,
    /// Mean response length in tokens.
    pub mean_tokens: f64,
    /// Mean sequence KL to the reference.
    pub mean_kl: f64,
    /// Standard error of the mean KL.
    pub kl_stderr: f64,
}

/// A line of a sweep output file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SweepLine {
    /// One response.
    Sample(SampleRecord),
    /// The averages of one lambda vector.
    Summary(LambdaSummary),
}

/// Sweep settings.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Lambda vectors.
    pub grid: Vec<Vec<f64>>,
    /// Samples per (prompt, lambda).
    pub samples: usize,
    /// Rewards to compute.
    pub rewards: Vec<Reward>,
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Base seed.
    pub seed: u64,
    /// Which part of the prompts to run.
    pub shard: Shard,
    /// Whether to score every response for KL (one extra forward pass per response).
    pub kl: bool,
}

/// Sample seed shared by every lambda: depends on the base seed, prompt and sample only.
pub fn sample_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    let mut x = seed
        ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (sample as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Runs the sweep on this shard's prompts; `progress` sees each finished response.
pub fn run(
    engine: &Realigner,
    prompts: &[String],
    sc: &SweepConfig,
    mut progress: impl FnMut(),
) -> Result<Vec<SampleRecord>> {
    check_size(sc.grid.len(), sc.samples)?;
    let tok = engine.tokenizer()?;
    let mixtures: Vec<Mixture> = sc
        .grid
        .iter()
        .map(|l| Mixture::new(l.clone()).map_err(|e| LabError::Other(e.to_string())))
        .collect::<Result<_>>()?;
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: sc.max_new_tokens,
        sampling: SamplingOptions {
            temperature: Some(sc.temperature),
            ..SamplingOptions::default()
        },
        seed: sc.seed,
        // The KL and log-probability are recorded while generating: no second pass.
        logprobs: sc.kl.then_some(0),
        kl_to_reference: sc.kl,
        ..Decoding::default()
    });
    let mut out = Vec::new();
    for p in sc.shard.indices(prompts.len()) {
        let ids = tok.encode(&prompts[p])?;
        let mut requests = Vec::with_capacity(mixtures.len() * sc.samples);
        for m in &mixtures {
            for s in 0..sc.samples {
                requests.push(Request {
                    prompt_ids: ids.clone(),
                    mixture: m.clone(),
                    seed: Some(sample_seed(sc.seed, p, s)),
                });
            }
        }
        let gens = engine.generate(&requests, &opts, |_| {})?;
        for (r, g) in requests.iter().zip(gens) {
            let (kl, logprob) = match &g.logprobs {
                Some(lp) if !lp.is_empty() => (
                    lp.iter().filter_map(|t| t.kl_to_reference).sum(),
                    lp.iter().map(|t| f64::from(t.logprob)).sum(),
                ),
                _ => (f64::NAN, f64::NAN),
            };
            let rewards = sc
                .rewards
                .iter()
                .map(|rw| (rw.name(), rw.score(&g.text)))
                .collect();
            let i = out.len();
            out.push(SampleRecord {
                prompt_index: p,
                prompt: prompts[p].clone(),
                lambdas: r.mixture.lambdas().to_vec(),
                sample: i % sc.samples,
                words: word_count(&g.text),
                response: g.text,
                tokens: g.tokens.len(),
                rewards,
                kl,
                logprob,
                finish_reason: serde_json::to_value(g.finish_reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            });
            progress();
        }
    }
    Ok(out)
}

fn key(l: &[f64]) -> Vec<u64> {
    l.iter().map(|x| x.to_bits()).collect()
}

/// Averages per lambda vector, in grid order of first appearance sorted by lambdas.
pub fn summarize(records: &[SampleRecord]) -> Vec<LambdaSummary> {
    let mut groups: Vec<(Vec<f64>, Vec<&SampleRecord>)> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|(l, _)| key(l) == key(&r.lambdas)) {
            Some((_, g)) => g.push(r),
            None => groups.push((r.lambdas.clone(), vec![r])),
        }
    }
    groups.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    groups
        .into_iter()
        .map(|(lambdas, g)| {
            let n = g.len() as f64;
            let mut mean_reward = BTreeMap::new();
            for r in &g {
                for (k, v) in &r.rewards {
                    *mean_reward.entry(k.clone()).or_insert(0.0) += v / n;
                }
            }
            let kls: Vec<f64> = g.iter().map(|r| r.kl).filter(|x| x.is_finite()).collect();
            let m = kls.iter().sum::<f64>() / kls.len().max(1) as f64;
            let var =
                kls.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (kls.len().max(2) - 1) as f64;
            LambdaSummary {
                lambdas,
                samples: g.len(),
                mean_reward,
                mean_words: g.iter().map(|r| r.words as f64).sum::<f64>() / n,
                mean_tokens: g.iter().map(|r| r.tokens as f64).sum::<f64>() / n,
                mean_kl: if kls.is_empty() { f64::NAN } else { m },
                kl_stderr: (var / kls.len().max(1) as f64).sqrt(),
            }
        })
        .collect()
}

/// Writes samples then summaries as JSONL, atomically; an existing file is replaced only with
/// `force`.
pub fn write(path: &Path, records: &[SampleRecord], force: bool) -> Result<()> {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(&SweepLine::Sample(r.clone())).unwrap());
        s.push('\n');
    }
    for m in summarize(records) {
        s.push_str(&serde_json::to_string(&SweepLine::Summary(m)).unwrap());
        s.push('\n');
    }
    Ok(dera_io::write_file(path, s.as_bytes(), force)?)
}

/// Reads the sample lines of a sweep output (summaries are recomputed, not read).
pub fn read(path: &Path) -> Result<Vec<SampleRecord>> {
    Ok(crate::corpus::read_jsonl::<SweepLine>(path)?
        .into_iter()
        .filter_map(|l| match l {
            SweepLine::Sample(s) => Some(s),
            SweepLine::Summary(_) => None,
        })
        .collect())
}

/// Joins shard outputs: samples sorted by (prompt, lambdas, sample); a sample present in two
/// files is an error.
pub fn merge(parts: &[Vec<SampleRecord>]) -> Result<Vec<SampleRecord>> {
    let mut all: Vec<SampleRecord> = parts.iter().flatten().cloned().collect();
    all.sort_by(|a, b| {
        (a.prompt_index, &a.lambdas, a.sample)
            .partial_cmp(&(b.prompt_index, &b.lambdas, b.sample))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for w in all.windows(2) {
        if w[0].prompt_index == w[1].prompt_index
            && key(&w[0].lambdas) == key(&w[1].lambdas)
            && w[0].sample == w[1].sample
        {
            return Err(LabError::Other(format!(
                "sample {} of prompt {} at lambdas {:?} appears twice: overlapping shards",
                w[0].sample, w[0].prompt_index, w[0].lambdas
            )));
        }
    }
    Ok(all)
}
