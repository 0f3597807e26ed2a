//! Step-level decoding: a batch of live sequences that decode in lockstep, joined and left one
//! at a time.
//!
//! A [`Session`] holds, for every model, the pending next-token logits of the sequences that
//! use it (those whose coefficient for it is non-zero), and for every forward pass of a step
//! its KV cache: a model alone, or an adapter group (the reference and LoRA adapters over its
//! weights) whose rows, one per (model, sequence), form one batch over the shared base. [`Session::add`]
//! prefills a new sequence and joins its cache rows to the running batch (the shorter side is
//! left-padded, padding is masked and positions count from each row's first real token);
//! [`Session::step`] mixes, processes and samples one token for every live sequence, then runs
//! each model on the tokens of the sequences still going; finished sequences wait in
//! [`Session::take_finished`].
//!
//! Per sequence, a step runs: the mixed logits (raw, `width` entries) -> the built-in
//! penalties and constraints of [`SamplingOptions`] -> the request's own processors, in order
//! -> the built-in warpers (temperature, top-k, top-p, min-p) -> the sampler.

use std::collections::HashMap;
use std::time::Instant;

use dera_logits::softmax::log_softmax;
use dera_logits::{BoxedProcessor, Context, LogitsProcessor, ProcessorChain, Sampler};
use dera_mix::{Mixture, Term, mix_logits};
use dera_models::burn::tensor::{Int, Tensor, TensorData};
use dera_models::{Device, KvCache, TokenStream};
use serde::{Deserialize, Serialize};

use crate::Decoding;
use crate::generate::{FinishReason, Timing};
use crate::prompts::Kept;
use crate::realigner::{PassPlan, to_rows};
use crate::score::kl_divergence;
use crate::{DeraError, Realigner};

/// Identifies a sequence inside a [`Session`] (never reused within a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeqId(pub u64);

/// Everything one sequence needs.
pub struct SequenceRequest {
    /// Prompt token ids (already tokenized, special tokens included).
    pub prompt_ids: Vec<u32>,
    /// The lambda vector of this sequence, one per aligned model.
    pub mixture: Mixture,
    /// How it decodes: length, sampling, seed, stop rules, what to record.
    pub decoding: Decoding,
    /// The caller's own processors: they run after the built-in penalties and constraints
    /// and before the built-in warpers, in this order.
    pub processors: Vec<BoxedProcessor>,
}

impl SequenceRequest {
    /// A request for `prompt_ids` under `mixture` with the default [`Decoding`]: sampled with
    /// seed 0, 64 new tokens at most, stopping on EOS, nothing recorded.
    pub fn new(prompt_ids: Vec<u32>, mixture: Mixture) -> Self {
        Self::with(prompt_ids, mixture, Decoding::default())
    }

    /// A request for `prompt_ids` under `mixture`, decoded as `decoding`, with no processors
    /// of the caller's.
    pub fn with(prompt_ids: Vec<u32>, mixture: Mixture, decoding: Decoding) -> Self {
        Self {
            prompt_ids,
            mixture,
            decoding,
            processors: Vec::new(),
        }
    }
}

impl Default for SequenceRequest {
    fn default() -> Self {
        Self::new(Vec::new(), Mixture::reference_only())
    }
}

impl std::fmt::Debug for SequenceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceRequest")
            .field("prompt_ids", &self.prompt_ids)
            .field("mixture", &self.mixture)
            .field("decoding", &self.decoding)
            .field(
                "processors",
                &self.processors.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What was recorded about one generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// `log p_mix(token)` under the mixed distribution (before processors and warpers).
    pub logprob: f32,
    /// The most likely tokens under the same distribution, best first.
    pub top: Vec<(u32, f32)>,
    /// `KL(p_mix || p_ref)` of this position's next-token distributions, when asked for.
    pub kl_to_reference: Option<f64>,
}

/// What one [`Session::step`] produced for one sequence.
#[derive(Debug, Clone)]
pub struct StepEvent {
    /// The sequence.
    pub id: SeqId,
    /// The token chosen.
    pub token: u32,
    /// Newly decodable text. Text that could still become a stop string is held back, and
    /// nothing past a stop string is ever emitted; the events' texts concatenate to the final
    /// text.
    pub text: String,
    /// What was recorded about the token, when the request asked.
    pub logprob: Option<TokenLogprob>,
    /// Why the sequence ended, on its last event.
    pub finish: Option<FinishReason>,
}

/// A finished sequence, taken out of the session.
#[derive(Debug)]
pub struct Finished {
    /// The sequence.
    pub id: SeqId,
    /// Generated token ids (an EOS that ended the sequence included).
    pub tokens: Vec<u32>,
    /// Decoded text (special tokens dropped, cut before a stop string).
    pub text: String,
    /// Why decoding stopped.
    pub finish_reason: FinishReason,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// One record per token, when the request asked.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// What ended the sequence when [`FinishReason::Error`] (non-finite logits, every token
    /// masked, a model failing); other sequences go on.
    pub error: Option<DeraError>,
}

struct Seq<'r> {
    id: SeqId,
    prompt: Vec<u32>,
    coefficients: Vec<f32>,
    processors: ProcessorChain,
    user: Vec<BoxedProcessor>,
    warpers: ProcessorChain,
    sampler: Sampler,
    max_new_tokens: usize,
    stop_strings: Vec<String>,
    eos: Vec<u32>,
    generated: Vec<u32>,
    stream: Option<TokenStream<'r>>,
    text: String,
    emitted: usize,
    logprobs: Option<usize>,
    kl: bool,
    recorded: Vec<TokenLogprob>,
}

/// One pass's prefill of new sequences: cache, next-token logits and the `(model, new
/// sequence index)` of every row.
type Prefilled = (KvCache, Tensor<2>, Vec<(usize, usize)>);

/// One model's share of the batch: the rows (indices into the live sequences, increasing) it
/// runs and their pending next-token logits.
#[derive(Default)]
struct Lane {
    rows: Vec<usize>,
    logits: Option<Tensor<2>>,
}

/// One forward pass of a step: its plan (one model, or an adapter group over one base), a
/// `(model, live sequence)` entry per cache row, and the cache.
/// Whether `passes` passes run side by side, one core each: on the CPU, with at least as many
/// passes as cores (DeRa's two models on two cores), so no core waits on another between
/// products; when this thread's products run alone anyway ([`dera_models::serial_kernels`]:
/// a server's sessions stepping side by side), so idle cores can take a pass; or when the
/// models stay in cache ([`Realigner::fits_in_cache`]), whose products are too small to split
/// over many cores. Otherwise (more cores than passes, large models) each pass uses every
/// core, in turn.
fn side_by_side(r: &Realigner, passes: usize) -> bool {
    passes > 1
        && *r.device() == Device::flex()
        && rayon::current_num_threads() > 1
        && (passes >= rayon::current_num_threads()
            || dera_models::in_serial_kernels()
            || r.fits_in_cache())
}

/// One pass's prefill: its rows' models and tokens, the cache they fill, and how the rows fan
/// out to the entries.
struct PrefillJob<'p> {
    plan: &'p PassPlan,
    /// Model of each (model, prompt) the pass runs (those not kept).
    row_models: Vec<usize>,
    tokens: Vec<u32>,
    cache: KvCache,
    /// Every (model, unique prompt) the entries need.
    need: Vec<(usize, usize)>,
    /// The kept rows of `need` (`None`: run by this job).
    kept: Vec<Option<Kept>>,
    /// `need` entries that continue a kept prompt: (entry, kept length, its rows), run alone
    /// from there; then the logits of each.
    extend: Vec<(usize, usize, KvCache)>,
    extended: Vec<Result<Tensor<3>, DeraError>>,
    entries: Vec<(usize, usize)>,
    /// Index into `need` of every entry.
    fan: Vec<usize>,
}

struct Pass {
    plan: PassPlan,
    entries: Vec<(usize, usize)>,
    cache: Option<KvCache>,
}

impl Pass {
    fn all(realigner: &Realigner) -> Vec<Pass> {
        realigner
            .pass_plans()
            .into_iter()
            .map(|plan| Pass {
                plan,
                entries: Vec::new(),
                cache: None,
            })
            .collect()
    }
}

/// Splits a pass's logits (one row per entry) into its models' rows: per member, the live
/// sequences (in entry order) and their logits.
fn split(
    logits: Tensor<2>,
    entries: &[(usize, usize)],
    members: &[usize],
) -> Vec<(usize, Vec<usize>, Option<Tensor<2>>)> {
    if let [j] = members {
        let rows = entries.iter().map(|&(_, s)| s).collect();
        return vec![(*j, rows, (!entries.is_empty()).then_some(logits))];
    }
    members
        .iter()
        .map(|&j| {
            let at: Vec<usize> = (0..entries.len()).filter(|&k| entries[k].0 == j).collect();
            let rows = at.iter().map(|&k| entries[k].1).collect();
            let h = match at.as_slice() {
                [] => None,
                [first, .., last] if last - first + 1 == at.len() => {
                    Some(logits.clone().narrow(0, *first, at.len()))
                }
                [first] => Some(logits.clone().narrow(0, *first, 1)),
                _ => Some(select(logits.clone(), &at)),
            };
            (j, rows, h)
        })
        .collect()
}

/// A batch of live sequences decoding in lockstep over one [`Realigner`].
///
/// `Send`, so a server can drive it from its own thread.
pub struct Session<'r> {
    realigner: &'r Realigner,
    seqs: Vec<Seq<'r>>,
    lanes: Vec<Lane>,
    passes: Vec<Pass>,
    finished: Vec<Finished>,
    next_id: u64,
    trim: bool,
    prefill_ms: f64,
    decode_ms: f64,
    steps: usize,
}

impl<'r> Session<'r> {
    /// An empty session over `realigner`.
    pub fn new(realigner: &'r Realigner) -> Self {
        Self {
            realigner,
            seqs: Vec::new(),
            lanes: (0..realigner.models.len())
                .map(|_| Lane::default())
                .collect(),
            passes: Pass::all(realigner),
            finished: Vec::new(),
            next_id: 0,
            trim: true,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            steps: 0,
        }
    }

    /// A session that keeps the padding of finished rows (the fixed batch of
    /// [`Realigner::generate`], whose numbers stay those of a batch prefilled together).
    pub(crate) fn fixed_batch(realigner: &'r Realigner) -> Self {
        Self {
            trim: false,
            ..Self::new(realigner)
        }
    }

    /// Number of live sequences.
    pub fn live(&self) -> usize {
        self.seqs.len()
    }

    /// True when no sequence is live.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Prefill time so far, and decoding time per step.
    pub fn timing(&self) -> Timing {
        Timing {
            load_ms: self.realigner.load_ms(),
            prefill_ms: self.prefill_ms,
            decode_ms_per_token: if self.steps > 0 {
                self.decode_ms / self.steps as f64
            } else {
                0.0
            },
        }
    }

    /// Validates and prefills one sequence; it joins the running batch at the next step.
    pub fn add(&mut self, seq: SequenceRequest) -> Result<SeqId, DeraError> {
        let ids = self.add_batch(vec![seq])?;
        Ok(ids[0])
    }

    /// Validates and prefills several sequences (those with identical prompts share one
    /// prefill, and a prompt the realigner's prompt cache kept is not run again:
    /// [`Realigner::set_prompt_cache_bytes`]). On an error nothing is added and the session is
    /// unchanged.
    pub fn add_batch(&mut self, seqs: Vec<SequenceRequest>) -> Result<Vec<SeqId>, DeraError> {
        let r = self.realigner;
        let n = seqs.len();
        for (i, s) in seqs.iter().enumerate() {
            r.check_mixture(&s.mixture)?;
            if s.prompt_ids.is_empty() {
                return Err(DeraError::Request(
                    "empty prompt: nothing to condition on".into(),
                ));
            }
            let at = if n == 1 {
                "the prompt".to_string()
            } else {
                format!("request {i}")
            };
            r.check_context(&at, s.prompt_ids.len(), s.decoding.max_new_tokens)?;
        }
        let mut built = Vec::with_capacity(n);
        for (i, s) in seqs.into_iter().enumerate() {
            built.push(self.build(s, SeqId(self.next_id + i as u64))?);
        }
        let start = Instant::now();
        // Sequences with nothing to generate end now, without a prefill.
        let (run, done): (Vec<Seq<'r>>, Vec<Seq<'r>>) =
            built.into_iter().partition(|s| s.max_new_tokens > 0);
        let joined = self.prefill(&run)?;
        self.next_id += n as u64;
        let ids: Vec<SeqId> = run.iter().chain(&done).map(|s| s.id).collect();
        let base = self.seqs.len();
        // Join every pass's new rows to its running ones first, then commit: an error leaves
        // the session as it was.
        let mut caches = Vec::with_capacity(joined.len());
        let mut lanes: Vec<Option<(Vec<usize>, Tensor<2>)>> =
            (0..self.lanes.len()).map(|_| None).collect();
        for (pass, part) in self.passes.iter().zip(joined) {
            let Some((cache, logits, entries)) = part else {
                caches.push(None);
                continue;
            };
            if let Some(old) = &pass.cache {
                old.check_join(&cache)?;
            }
            let entries: Vec<(usize, usize)> =
                entries.into_iter().map(|(j, i)| (j, base + i)).collect();
            for (j, rows, h) in split(logits, &entries, &pass.plan.members) {
                let Some(h) = h else { continue };
                let h = match &self.lanes[j].logits {
                    None => h,
                    Some(old) => Tensor::cat(vec![old.clone(), h], 0),
                };
                lanes[j] = Some((rows, h));
            }
            caches.push(Some((cache, entries)));
        }
        for (pass, part) in self.passes.iter_mut().zip(caches) {
            if let Some((cache, entries)) = part {
                pass.entries.extend(entries);
                // Checked above: joining cannot fail, and moves only the new rows.
                pass.cache = Some(match pass.cache.take() {
                    None => cache,
                    Some(old) if self.trim => old.concat(cache)?.trim(),
                    Some(old) => old.concat(cache)?,
                });
            }
        }
        for (lane, part) in self.lanes.iter_mut().zip(lanes) {
            if let Some((rows, logits)) = part {
                lane.rows.extend(rows);
                lane.logits = Some(logits);
            }
        }
        self.seqs.extend(run);
        for s in done {
            self.finished.push(finish(r, s, FinishReason::Length, None));
        }
        self.prefill_ms += start.elapsed().as_secs_f64() * 1e3;
        let mut sorted = ids;
        sorted.sort();
        Ok(sorted)
    }

    fn build(&self, s: SequenceRequest, id: SeqId) -> Result<Seq<'r>, DeraError> {
        let r = self.realigner;
        let d = s.decoding;
        let mut sampling = d.sampling;
        if sampling.eos_ids.is_empty() {
            sampling.eos_ids = r.eos_token_ids().to_vec();
        }
        Ok(Seq {
            id,
            coefficients: s.mixture.coefficients_f32(),
            processors: ProcessorChain::processors_from_options(&sampling)?,
            user: s.processors,
            warpers: ProcessorChain::warpers_from_options(&sampling)?,
            sampler: if d.greedy {
                Sampler::greedy()
            } else {
                Sampler::seeded(d.seed)
            },
            max_new_tokens: d.max_new_tokens,
            stop_strings: d
                .stop_strings
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect(),
            eos: if d.stop_on_eos {
                r.eos_token_ids().to_vec()
            } else {
                Vec::new()
            },
            generated: Vec::new(),
            stream: r.tokenizer_opt().map(|t| t.stream()),
            text: String::new(),
            emitted: 0,
            logprobs: d.logprobs,
            kl: d.kl_to_reference,
            recorded: Vec::new(),
            prompt: s.prompt_ids,
        })
    }

    /// Models each sequence runs on: non-zero coefficients, plus the reference for the KL.
    fn uses(seq: &Seq<'_>, model: usize) -> bool {
        seq.coefficients[model] != 0.0 || (model == 0 && seq.kl)
    }

    /// Prefills `seqs` on every pass some of them use: per pass, the cache, the next-token
    /// logits and the `(model, index into seqs)` of every row.
    fn prefill(&self, seqs: &[Seq<'r>]) -> Result<Vec<Option<Prefilled>>, DeraError> {
        let mut out = Vec::new();
        if seqs.is_empty() {
            return Ok(out);
        }
        // Unique prompts.
        let mut unique: Vec<&[u32]> = Vec::new();
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let row_prompt: Vec<usize> = seqs
            .iter()
            .map(|s| {
                *index.entry(s.prompt.as_slice()).or_insert_with(|| {
                    unique.push(&s.prompt);
                    unique.len() - 1
                })
            })
            .collect();
        // Each model runs only the rows where its coefficient is non-zero (a sweep's lambda = 0
        // row needs only the reference, its lambda = 1 row only the aligned model): a zero
        // coefficient contributes exactly nothing to the mixed logits. A pass runs each
        // (model, prompt) pair its entries need once, unless the prompt cache kept its rows,
        // then fans the rows out to the entries.
        let r = self.realigner;
        let kept_rows = r.prompt_cache();
        let keep = kept_rows.enabled();
        // Per pass: what to run (None: nothing), then run them, then fan the rows out.
        let mut jobs: Vec<Option<PrefillJob<'_>>> = Vec::with_capacity(self.passes.len());
        for pass in &self.passes {
            let mut need: Vec<(usize, usize)> = Vec::new();
            let mut entries: Vec<(usize, usize)> = Vec::new();
            let mut fan: Vec<usize> = Vec::new();
            for &j in &pass.plan.members {
                for (i, seq) in seqs.iter().enumerate() {
                    if !Self::uses(seq, j) {
                        continue;
                    }
                    let key = (j, row_prompt[i]);
                    let at = match need.iter().position(|&k| k == key) {
                        Some(at) => at,
                        None => {
                            need.push(key);
                            need.len() - 1
                        }
                    };
                    entries.push((j, i));
                    fan.push(at);
                }
            }
            if entries.is_empty() {
                jobs.push(None);
                continue;
            }
            let kept: Vec<Option<Kept>> = need
                .iter()
                .map(|&(j, u)| keep.then(|| kept_rows.get(j, unique[u])).flatten())
                .collect();
            // A prompt that continues a kept one, or shares its first tokens with one, runs only
            // its rest from the kept rows.
            let mut extend = Vec::new();
            for (e, &(j, u)) in need.iter().enumerate() {
                if keep
                    && kept[e].is_none()
                    && let Some((from, cache)) = kept_rows.longest_start(j, unique[u])
                {
                    extend.push((e, from, cache));
                }
            }
            let run: Vec<(usize, usize)> = need
                .iter()
                .enumerate()
                .filter(|&(e, _)| kept[e].is_none() && !extend.iter().any(|x| x.0 == e))
                .map(|(_, &n)| n)
                .collect();
            // The prompts to run, left-padded to the longest of them.
            let longest = run.iter().map(|&(_, u)| unique[u].len()).max().unwrap_or(0);
            let mut tokens = Vec::with_capacity(run.len() * longest);
            for &(_, u) in &run {
                tokens.extend(std::iter::repeat_n(unique[u][0], longest - unique[u].len()));
                tokens.extend_from_slice(unique[u]);
            }
            let layers = r.models[need[0].0].new_cache().num_layers();
            let pads = run.iter().map(|&(_, u)| longest - unique[u].len());
            let cache = KvCache::with_padding(layers, pads.collect());
            let row_models: Vec<usize> = run.iter().map(|&(j, _)| j).collect();
            jobs.push(Some(PrefillJob {
                plan: &pass.plan,
                row_models,
                tokens,
                cache,
                need,
                kept,
                extend,
                extended: Vec::new(),
                entries,
                fan,
            }));
        }
        let run = |job: &mut PrefillJob<'_>| {
            for (e, from, cache) in &mut job.extend {
                let (j, u) = job.need[*e];
                let rest = &unique[u][*from..];
                job.extended
                    .push(r.forward_pass(job.plan, &[j], rest, cache, false));
            }
            if job.row_models.is_empty() {
                return None; // every row was kept or continued
            }
            Some(r.forward_pass(
                job.plan,
                &job.row_models,
                &job.tokens,
                &mut job.cache,
                false,
            ))
        };
        let live = jobs
            .iter()
            .flatten()
            .filter(|j| !j.row_models.is_empty() || !j.extend.is_empty())
            .count();
        // As in a decode step: passes side by side when there are at least as many as cores.
        type Ran = Option<Option<Result<Tensor<3>, DeraError>>>;
        let logits: Vec<Ran> = if side_by_side(r, live) {
            use rayon::prelude::*;
            jobs.par_iter_mut()
                .map(|j| j.as_mut().map(|j| dera_models::serial_kernels(|| run(j))))
                .collect()
        } else {
            jobs.iter_mut().map(|j| j.as_mut().map(run)).collect()
        };
        for (job, logits) in jobs.into_iter().zip(logits) {
            let (Some(job), Some(logits)) = (job, logits) else {
                out.push(None);
                continue;
            };
            let PrefillJob {
                cache,
                need,
                mut kept,
                extend,
                extended,
                entries,
                fan,
                ..
            } = job;
            // Rows: those run from the start (in `need` order), then the continued and kept
            // ones; `at[e]` is the row of `need[e]`. Rows computed here are kept for later
            // requests (a failure further on leaves them kept: they are right).
            let mut at = vec![0usize; need.len()];
            let mut caches = Vec::new();
            let mut rows = Vec::new();
            let mut next = 0;
            if let Some(logits) = logits {
                let logits = logits?;
                let [b, _, v] = logits.dims();
                let logits = logits.reshape([b, v]);
                let continued = |e: usize| extend.iter().any(|x| x.0 == e);
                for (e, _) in kept
                    .iter()
                    .enumerate()
                    .filter(|&(e, k)| k.is_none() && !continued(e))
                {
                    at[e] = next;
                    if keep {
                        let (j, u) = need[e];
                        // Its own row, without the padding it had beside longer prompts.
                        let row = cache.select_rows(&[next]).trim();
                        let row = (row, select(logits.clone(), &[next]));
                        kept_rows.put(j, unique[u], row);
                    }
                    next += 1;
                }
                caches.push(cache);
                rows.push(logits);
            }
            // Continued prompts: kept whole from now on, then joined as kept rows are.
            for ((e, _, c), logits) in extend.into_iter().zip(extended) {
                let logits = logits?;
                let [b, _, v] = logits.dims();
                let l = logits.reshape([b, v]);
                if keep {
                    let (j, u) = need[e];
                    kept_rows.put(j, unique[u], (c.clone().trim(), l.clone()));
                }
                kept[e] = Some((c, l));
            }
            for (e, k) in kept.iter_mut().enumerate() {
                if let Some((c, l)) = k.take() {
                    at[e] = next;
                    next += 1;
                    caches.push(c);
                    rows.push(l);
                }
            }
            let mut joined: Option<KvCache> = None;
            for c in caches {
                joined = Some(match joined {
                    None => c,
                    Some(a) => a.concat(c)?,
                });
            }
            let Some(cache) = joined else {
                out.push(None);
                continue;
            };
            let logits = if rows.len() == 1 {
                rows.remove(0)
            } else {
                Tensor::cat(rows, 0)
            };
            let fan: Vec<usize> = fan.iter().map(|&e| at[e]).collect();
            if fan.len() != next || fan.iter().enumerate().any(|(i, &u)| i != u) {
                out.push(Some((
                    cache.select_rows(&fan),
                    select(logits, &fan),
                    entries,
                )));
            } else {
                out.push(Some((cache, logits, entries)));
            }
        }
        Ok(out)
    }

    /// Ends sequence `id` now; it appears in [`Session::take_finished`] as
    /// [`FinishReason::Cancelled`]. False when no live sequence has that id.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        let Some(row) = self.seqs.iter().position(|s| s.id == id) else {
            return false;
        };
        let keep: Vec<usize> = (0..self.seqs.len()).filter(|&i| i != row).collect();
        let gone = self.keep_rows(&keep);
        for s in gone {
            self.finished
                .push(finish(self.realigner, s, FinishReason::Cancelled, None));
        }
        true
    }

    /// The sequences that ended since the last call, in the order they ended.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    /// One token for every live sequence: mix, process, sample, stop, then run the models on
    /// the tokens of the sequences that go on. A sequence that fails (non-finite logits,
    /// every token masked) emits no event and ends with [`FinishReason::Error`]; a model
    /// failing ends every live sequence that way and is returned as the error.
    pub fn step(&mut self) -> Result<Vec<StepEvent>, DeraError> {
        if self.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let r = self.realigner;
        let b = self.seqs.len();
        // The reference's rows of the sequences that record the KL.
        let kl_rows: Vec<usize> = (0..b).filter(|&i| self.seqs[i].kl).collect();
        let reference = if kl_rows.is_empty() {
            None
        } else {
            let lane = &self.lanes[0];
            let at: Vec<usize> = kl_rows
                .iter()
                .filter_map(|i| lane.rows.iter().position(|x| x == i))
                .collect();
            lane.logits
                .clone()
                .map(|h| select(h, &at).narrow(1, 0, r.width))
        };
        let terms: Vec<Term> = self
            .lanes
            .iter_mut()
            .enumerate()
            .filter_map(|(j, lane)| {
                let logits = lane.logits.take()?;
                Some(Term {
                    coefficients: lane
                        .rows
                        .iter()
                        .map(|&i| self.seqs[i].coefficients[j])
                        .collect(),
                    rows: lane.rows.clone(),
                    logits,
                })
            })
            .collect();
        let mixed = to_rows(mix_logits(terms, b, r.width, &r.device))?;
        let mut reference_rows = match reference {
            Some(t) => to_rows(t)?.into_iter().map(Some).collect(),
            None => Vec::new(),
        }
        .into_iter();
        let mut events = Vec::with_capacity(b);
        let mut ended: Vec<Option<(FinishReason, Option<DeraError>)>> = Vec::with_capacity(b);
        for (seq, mut h) in self.seqs.iter_mut().zip(mixed) {
            let reference = if seq.kl {
                reference_rows.next().flatten()
            } else {
                None
            };
            match decode_one(seq, &mut h, reference) {
                Ok(ev) => {
                    ended.push(ev.finish.map(|f| (f, None)));
                    events.push(ev);
                }
                Err(e) => ended.push(Some((FinishReason::Error, Some(e)))),
            }
        }
        let keep: Vec<usize> = (0..b).filter(|&i| ended[i].is_none()).collect();
        if keep.len() != b {
            let mut reasons = ended.into_iter().flatten();
            for s in self.keep_rows(&keep) {
                if let Some((reason, error)) = reasons.next() {
                    self.finished.push(finish(r, s, reason, error));
                }
            }
        }
        self.steps += 1;
        if let Err(e) = self.advance() {
            for s in std::mem::take(&mut self.seqs) {
                let error = DeraError::Request(format!("a model failed: {e}"));
                self.finished
                    .push(finish(r, s, FinishReason::Error, Some(error)));
            }
            self.lanes = (0..r.models.len()).map(|_| Lane::default()).collect();
            self.passes = Pass::all(r);
            return Err(e);
        }
        self.decode_ms += start.elapsed().as_secs_f64() * 1e3;
        Ok(events)
    }

    /// Runs every pass on the last token of each of its live rows.
    fn advance(&mut self) -> Result<(), DeraError> {
        let r = self.realigner;
        let seqs = &self.seqs;
        let mut work: Vec<(&mut Pass, Vec<u32>, Vec<usize>)> = self
            .passes
            .iter_mut()
            .filter(|p| p.cache.is_some())
            .map(|pass| {
                let tokens: Vec<u32> = pass
                    .entries
                    .iter()
                    .filter_map(|&(_, i)| seqs[i].generated.last().copied())
                    .collect();
                let row_models: Vec<usize> = pass.entries.iter().map(|&(j, _)| j).collect();
                (pass, tokens, row_models)
            })
            .collect();
        let run = |(pass, tokens, row_models): &mut (&mut Pass, Vec<u32>, Vec<usize>)| {
            let cache = pass
                .cache
                .as_mut()
                .ok_or_else(|| DeraError::Request("a pass lost its cache".into()))?;
            r.forward_pass(&pass.plan, row_models, tokens, cache, false)
        };
        // On the CPU with at least as many passes as cores (DeRa's two models on two cores),
        // the passes run side by side, each on one core with its own weights: no core waits
        // on another between products. With more cores than passes each pass uses them all.
        let outs: Vec<Result<Tensor<3>, DeraError>> = if side_by_side(r, work.len()) {
            use rayon::prelude::*;
            work.par_iter_mut()
                .map(|w| dera_models::serial_kernels(|| run(w)))
                .collect()
        } else {
            work.iter_mut().map(run).collect()
        };
        let mut results = Vec::with_capacity(outs.len());
        for ((pass, _, _), out) in work.into_iter().zip(outs) {
            results.push((pass.entries.clone(), pass.plan.members.clone(), out?));
        }
        for (entries, members, out) in results {
            let [b, _, v] = out.dims();
            for (j, rows, h) in split(out.reshape([b, v]), &entries, &members) {
                let lane = &mut self.lanes[j];
                lane.rows = rows;
                lane.logits = h;
            }
        }
        Ok(())
    }

    /// Keeps the live rows `keep` (increasing), narrowing every pass and lane; returns the
    /// others.
    fn keep_rows(&mut self, keep: &[usize]) -> Vec<Seq<'r>> {
        let mut old_to_new = vec![None; self.seqs.len()];
        for (new, &old) in keep.iter().enumerate() {
            old_to_new[old] = Some(new);
        }
        for pass in &mut self.passes {
            let local: Vec<usize> = (0..pass.entries.len())
                .filter(|&k| old_to_new[pass.entries[k].1].is_some())
                .collect();
            if local.len() != pass.entries.len() {
                pass.cache = match pass.cache.take() {
                    Some(_) if local.is_empty() => None,
                    Some(c) if self.trim => Some(c.keep_rows(&local).trim()),
                    Some(c) => Some(c.keep_rows(&local)),
                    None => None,
                };
            }
            pass.entries = pass
                .entries
                .iter()
                .filter_map(|&(j, old)| old_to_new[old].map(|new| (j, new)))
                .collect();
        }
        for lane in &mut self.lanes {
            let local: Vec<usize> = lane
                .rows
                .iter()
                .enumerate()
                .filter(|&(_, &old)| old_to_new[old].is_some())
                .map(|(pos, _)| pos)
                .collect();
            if local.len() != lane.rows.len() {
                lane.logits = match lane.logits.take() {
                    Some(_) if local.is_empty() => None,
                    Some(h) => Some(select(h, &local)),
                    None => None,
                };
            }
            lane.rows = lane
                .rows
                .iter()
                .filter_map(|&old| old_to_new[old])
                .collect();
        }
        let mut all: Vec<Option<Seq<'r>>> = std::mem::take(&mut self.seqs)
            .into_iter()
            .map(Some)
            .collect();
        self.seqs = keep.iter().filter_map(|&i| all[i].take()).collect();
        all.into_iter().flatten().collect()
    }
}

/// Processes and samples one row, records what was asked, streams text, decides the end.
fn decode_one(
    seq: &mut Seq<'_>,
    h: &mut [f32],
    reference: Option<Vec<f32>>,
) -> Result<StepEvent, DeraError> {
    let step = seq.generated.len();
    if let Some(&value) = h.iter().find(|v| !v.is_finite()) {
        return Err(DeraError::NonFinite {
            at: format!(
                "decoding step {step} (new token {} of request {})",
                step + 1,
                seq.id.0
            ),
            value,
        });
    }
    let recorded = (seq.logprobs.is_some() || seq.kl).then(|| log_softmax(h));
    let ctx = Context::new(&seq.prompt, &seq.generated);
    seq.processors.process(h, &ctx);
    for p in &seq.user {
        p.process(h, &ctx);
    }
    seq.warpers.process(h, &ctx);
    let token = seq.sampler.sample(h)?;
    let logprob = recorded.map(|lp| {
        let kl_to_reference = reference.map(|q| kl_divergence(&lp, &log_softmax(&q)));
        let record = TokenLogprob {
            token,
            logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
            top: top_n(&lp, seq.logprobs.unwrap_or(0)),
            kl_to_reference,
        };
        seq.recorded.push(record.clone());
        record
    });
    seq.generated.push(token);
    let before = seq.text.len();
    if let Some(stream) = seq.stream.as_mut()
        && let Some(piece) = stream.push(token)?
    {
        seq.text.push_str(&piece);
    }
    let stop_at = find_stop(&seq.text, before, &seq.stop_strings);
    let finish = if seq.eos.contains(&token) {
        Some(FinishReason::Eos)
    } else if stop_at.is_some() {
        Some(FinishReason::StopString)
    } else if seq.generated.len() >= seq.max_new_tokens {
        Some(FinishReason::Length)
    } else {
        None
    };
    let upto = match (finish, stop_at) {
        (Some(FinishReason::StopString), Some(at)) => at,
        (Some(_), _) => {
            if let Some(rest) = seq.stream.as_mut().map(TokenStream::finish).transpose()? {
                seq.text.push_str(&rest.unwrap_or_default());
            }
            match find_stop(&seq.text, before, &seq.stop_strings) {
                Some(at) => at,
                None => seq.text.len(),
            }
        }
        (None, _) => seq.text.len() - held_back(&seq.text[seq.emitted..], &seq.stop_strings),
    };
    let text = seq.text[seq.emitted..upto.max(seq.emitted)].to_string();
    seq.emitted = upto.max(seq.emitted);
    Ok(StepEvent {
        id: seq.id,
        token,
        text,
        logprob,
        finish,
    })
}

/// The earliest stop string in `text`, knowing none ended before byte `before`.
fn find_stop(text: &str, before: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let mut from = before.saturating_sub(s.len().saturating_sub(1));
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            text[from..].find(s.as_str()).map(|p| from + p)
        })
        .min()
}

/// Bytes at the end of `text` that begin some stop string (and so may not be emitted yet).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .filter_map(|s| {
            (1..s.len())
                .rev()
                .find(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
        })
        .max()
        .unwrap_or(0)
}

/// The `n` largest entries of `row` as `(index, value)`, largest first.
pub(crate) fn top_n(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let by = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let n = n.min(idx.len());
    if n < idx.len() {
        idx.select_nth_unstable_by(n, by);
        idx.truncate(n);
    }
    idx.sort_by(by);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// A sequence's end: its final text is the decode of every token, cut before a stop string.
fn finish(
    r: &Realigner,
    s: Seq<'_>,
    finish_reason: FinishReason,
    error: Option<DeraError>,
) -> Finished {
    let mut text = r
        .tokenizer_opt()
        .and_then(|t| t.decode(&s.generated).ok())
        .unwrap_or_default();
    if finish_reason == FinishReason::StopString
        && let Some(cut) = s
            .stop_strings
            .iter()
            .filter_map(|x| text.find(x.as_str()))
            .min()
    {
        text.truncate(cut);
    }
    Finished {
        id: s.id,
        prompt_tokens: s.prompt.len(),
        tokens: s.generated,
        text,
        finish_reason,
        logprobs: (s.logprobs.is_some() || s.kl).then_some(s.recorded),
        error,
    }
}

pub(crate) fn select(t: Tensor<2>, rows: &[usize]) -> Tensor<2> {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &t.device());
    t.select(0, idx)
}
