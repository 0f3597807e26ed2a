//! Lockstep decoding of a batch of requests, each with its own mixture.

use std::collections::HashMap;
use std::time::Instant;

use dera_logits::{Context, LogitsProcessor, ProcessorChain, Sampler, SamplingOptions};
use dera_mix::Mixture;
use dera_models::burn::tensor::Tensor;
use dera_models::{CausalLm, KvCache};
use serde::{Deserialize, Serialize};

use crate::realigner::{check_finite, to_rows};
use crate::{DeraError, Realigner};

/// One sequence to generate: a prompt and the mixture to decode it with.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (already tokenized, special tokens included).
    pub prompt_ids: Vec<u32>,
    /// The lambda vector of this sequence.
    pub mixture: Mixture,
    /// Sampling seed; `None` derives one from [`GenerateOptions::seed`] and the request index.
    pub seed: Option<u64>,
}

/// Decoding controls shared by a batch.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate per sequence.
    pub max_new_tokens: usize,
    /// Processor chain settings (temperature, top-k, top-p, penalties, ...).
    pub sampling: SamplingOptions,
    /// Pick the argmax instead of sampling.
    pub greedy: bool,
    /// Base seed for sampling.
    pub seed: u64,
    /// Stop when the generated text contains one of these strings (the text is cut before it).
    pub stop_strings: Vec<String>,
    /// Stop on the reference model's EOS ids.
    pub stop_on_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: SamplingOptions::default(),
            greedy: false,
            seed: 0,
            stop_strings: Vec::new(),
            stop_on_eos: true,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS token was generated.
    Eos,
    /// A stop string appeared.
    StopString,
    /// `max_new_tokens` was reached.
    Length,
}

/// Wall-clock timing of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Loading the models.
    pub load_ms: f64,
    /// Prefilling every model on the prompts.
    pub prefill_ms: f64,
    /// Decoding time divided by the number of decoding steps.
    pub decode_ms_per_token: f64,
}

/// The result of one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// Generated token ids (an EOS that ended the sequence included).
    pub tokens: Vec<u32>,
    /// Decoded text (special tokens dropped, cut before a stop string).
    pub text: String,
    /// Why decoding stopped.
    pub finish_reason: FinishReason,
    /// Timing of the batch this request was decoded in.
    pub timing: Timing,
}

/// A token as it is generated.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent {
    /// Index of the request in the batch.
    pub request: usize,
    /// The token id.
    pub token: u32,
    /// Position in the generated sequence.
    pub step: usize,
}

struct Row {
    request: usize,
    sampler: Sampler,
    generated: Vec<u32>,
}

impl Realigner {
    /// Generates every request in one lockstep batch. Requests with the same prompt share one
    /// prefill; different prompts are left-padded. `on_token` sees each token as it is chosen.
    pub fn generate(
        &self,
        requests: &[Request],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(TokenEvent),
    ) -> Result<Vec<Generation>, DeraError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        for (i, r) in requests.iter().enumerate() {
            self.check_mixture(&r.mixture)?;
            if r.prompt_ids.is_empty() {
                return Err(DeraError::Request(
                    "empty prompt: nothing to condition on".into(),
                ));
            }
            let at = if requests.len() == 1 {
                "the prompt".to_string()
            } else {
                format!("request {i}")
            };
            self.check_context(&at, r.prompt_ids.len(), opts.max_new_tokens)?;
        }
        let chain = ProcessorChain::from_options(&opts.sampling)?;
        let eos: Vec<u32> = if opts.stop_on_eos {
            self.eos_token_ids().to_vec()
        } else {
            Vec::new()
        };
        let tokenizer = self.reference().tokenizer.as_ref();

        // Unique prompts, left-padded to one length.
        let mut unique: Vec<&[u32]> = Vec::new();
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let row_prompt: Vec<usize> = requests
            .iter()
            .map(|r| {
                *index.entry(r.prompt_ids.as_slice()).or_insert_with(|| {
                    unique.push(&r.prompt_ids);
                    unique.len() - 1
                })
            })
            .collect();
        let longest = unique.iter().map(|p| p.len()).max().unwrap_or(0);
        let pads: Vec<usize> = unique.iter().map(|p| longest - p.len()).collect();
        let mut tokens = Vec::with_capacity(unique.len() * longest);
        for (p, &pad) in unique.iter().zip(&pads) {
            tokens.extend(std::iter::repeat_n(p[0], pad));
            tokens.extend_from_slice(p);
        }

        // Each model runs only the rows where its coefficient is non-zero (a sweep's lambda = 0
        // row needs only the reference, its lambda = 1 row only the aligned model): a zero
        // coefficient contributes exactly nothing to the mixed logits, so skipping it changes no
        // result and saves that model's whole pass over the row.
        let used: Vec<Vec<usize>> = requests.iter().map(|r| r.mixture.used_models()).collect();
        let mut lanes: Vec<Vec<usize>> = (0..self.models.len())
            .map(|j| {
                (0..requests.len())
                    .filter(|&i| used[i].contains(&j))
                    .collect()
            })
            .collect();

        let start = Instant::now();
        let mut caches: Vec<Option<KvCache>> = Vec::with_capacity(self.models.len());
        let mut logits: Vec<Option<Tensor<2>>> = Vec::with_capacity(self.models.len());
        for (m, lane) in self.models.iter().zip(&lanes) {
            if lane.is_empty() {
                caches.push(None);
                logits.push(None);
                continue;
            }
            let mut cache = KvCache::with_padding(m.model.config().num_layers, pads.clone());
            let out = m.model.forward(&tokens, unique.len(), &mut cache, false)?;
            let [b, _, v] = out.dims();
            let out = out.reshape([b, v]);
            // Fan the prefilled prompts out to this model's rows.
            let fan: Vec<usize> = lane.iter().map(|&i| row_prompt[i]).collect();
            if fan.len() != unique.len() || fan.iter().enumerate().any(|(i, &u)| i != u) {
                caches.push(Some(cache.select_rows(&fan)));
                logits.push(Some(select(out, &fan)));
            } else {
                caches.push(Some(cache));
                logits.push(Some(out));
            }
        }
        let prefill_ms = start.elapsed().as_secs_f64() * 1e3;

        let mut rows: Vec<Row> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| Row {
                request: i,
                sampler: if opts.greedy {
                    Sampler::greedy()
                } else {
                    Sampler::seeded(r.seed.unwrap_or(opts.seed.wrapping_add(i as u64)))
                },
                generated: Vec::new(),
            })
            .collect();
        let mut done: Vec<Option<(Vec<u32>, FinishReason)>> = vec![None; requests.len()];
        let decode_start = Instant::now();
        let mut steps = 0usize;
        for step in 0..opts.max_new_tokens {
            let mixtures: Vec<&Mixture> =
                rows.iter().map(|r| &requests[r.request].mixture).collect();
            let full = logits
                .into_iter()
                .zip(&lanes)
                .filter_map(|(h, lane)| h.map(|h| widen(h, lane, rows.len())))
                .collect();
            let active: Vec<usize> = (0..self.models.len())
                .filter(|&j| !lanes[j].is_empty())
                .collect();
            let mixed = to_rows(self.mix(full, &active, &mixtures))?;
            check_finite(&mixed, |i| {
                format!(
                    "decoding step {step} (new token {} of request {})",
                    step + 1,
                    rows[i].request
                )
            })?;
            let mut next = Vec::with_capacity(rows.len());
            let mut keep = Vec::with_capacity(rows.len());
            for (i, (row, mut h)) in rows.iter_mut().zip(mixed).enumerate() {
                let prompt = &requests[row.request].prompt_ids;
                chain.process(&mut h, &Context::new(prompt, &row.generated));
                let token = row.sampler.sample(&h)?;
                row.generated.push(token);
                on_token(TokenEvent {
                    request: row.request,
                    token,
                    step,
                });
                let finish = if eos.contains(&token) {
                    Some(FinishReason::Eos)
                } else if !opts.stop_strings.is_empty()
                    && tokenizer
                        .and_then(|t| t.decode(&row.generated).ok())
                        .is_some_and(|text| {
                            opts.stop_strings.iter().any(|s| text.contains(s.as_str()))
                        })
                {
                    Some(FinishReason::StopString)
                } else if step + 1 == opts.max_new_tokens {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                match finish {
                    Some(reason) => {
                        done[row.request] = Some((std::mem::take(&mut row.generated), reason))
                    }
                    None => {
                        keep.push(i);
                        next.push(token);
                    }
                }
            }
            steps += 1;
            if keep.is_empty() {
                break;
            }
            if keep.len() != rows.len() {
                let kept: Vec<Row> = {
                    let mut all: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
                    keep.iter().filter_map(|&i| all[i].take()).collect()
                };
                rows = kept;
                // Renumber each model's rows and narrow its cache to the rows it keeps.
                let mut old_to_new = vec![None; mixtures.len()];
                for (new, &old) in keep.iter().enumerate() {
                    old_to_new[old] = Some(new);
                }
                for (lane, cache) in lanes.iter_mut().zip(caches.iter_mut()) {
                    let local: Vec<usize> = lane
                        .iter()
                        .enumerate()
                        .filter(|&(_, &old)| old_to_new[old].is_some())
                        .map(|(pos, _)| pos)
                        .collect();
                    let renumbered: Vec<usize> =
                        lane.iter().filter_map(|&old| old_to_new[old]).collect();
                    *cache = match cache.take() {
                        Some(_) if local.is_empty() => None,
                        Some(c) if local.len() == lane.len() => Some(c),
                        Some(c) => Some(c.select_rows(&local)),
                        None => None,
                    };
                    *lane = renumbered;
                }
            }
            logits = Vec::with_capacity(self.models.len());
            for ((m, cache), lane) in self.models.iter().zip(caches.iter_mut()).zip(&lanes) {
                let Some(cache) = cache.as_mut() else {
                    logits.push(None);
                    continue;
                };
                let tokens: Vec<u32> = lane.iter().map(|&i| next[i]).collect();
                let out = m.model.forward(&tokens, lane.len(), cache, false)?;
                let [b, _, v] = out.dims();
                logits.push(Some(out.reshape([b, v])));
            }
        }
        let decode_ms = decode_start.elapsed().as_secs_f64() * 1e3;
        let timing = Timing {
            load_ms: self.load_ms(),
            prefill_ms,
            decode_ms_per_token: if steps > 0 {
                decode_ms / steps as f64
            } else {
                0.0
            },
        };
        done.into_iter()
            .map(|d| {
                let (tokens, finish_reason) = d.unwrap_or((Vec::new(), FinishReason::Length));
                let mut text = match tokenizer {
                    Some(t) => t.decode(&tokens)?,
                    None => String::new(),
                };
                if finish_reason == FinishReason::StopString
                    && let Some(cut) = opts
                        .stop_strings
                        .iter()
                        .filter_map(|s| text.find(s.as_str()))
                        .min()
                {
                    text.truncate(cut);
                }
                Ok(Generation {
                    tokens,
                    text,
                    finish_reason,
                    timing,
                })
            })
            .collect()
    }
}

/// Spreads a model's logits over its `lane` rows to all `batch` rows. Rows outside the lane
/// repeat the lane's first row; their coefficient is zero, so they add exactly nothing.
fn widen(h: Tensor<2>, lane: &[usize], batch: usize) -> Tensor<2> {
    if lane.len() == batch {
        return h;
    }
    let mut from = vec![0usize; batch];
    for (pos, &row) in lane.iter().enumerate() {
        from[row] = pos;
    }
    select(h, &from)
}

fn select(t: Tensor<2>, rows: &[usize]) -> Tensor<2> {
    use dera_models::burn::tensor::{Int, TensorData};
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &t.device());
    t.select(0, idx)
}
