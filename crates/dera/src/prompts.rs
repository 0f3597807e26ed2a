//! Prefilled prompts kept for later requests.
//!
//! A model's keys and values for a prompt, and its next-token logits after it, do not depend on
//! the lambda of the request or on its sampling options: a sweep that sends one prompt at
//! several lambdas, a client that asks again, or `n` choices sent as separate requests prefill
//! the same rows. [`PromptCache`] keeps them, per model and exact prompt, within a byte budget
//! (least recently used first out), and [`crate::Session`] joins a kept row instead of running
//! the prompt again, or, for a prompt that continues a kept one (the next turn of a chat),
//! runs only the rest from the kept rows. A row's bits are the same alone or in a left-padded batch, so a sequence
//! decodes the same tokens whether its prompt was kept or not.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use dera_models::KvCache;
use dera_models::burn::tensor::Tensor;

/// Bytes of prefilled prompts a [`crate::Realigner`] keeps unless told otherwise: 64 MiB.
pub const PROMPT_CACHE_BYTES: usize = 64 << 20;

/// What the prompt cache holds and how it has served ([`crate::Realigner::prompt_cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptCacheStats {
    /// Prefills of one model and prompt served from the cache.
    pub hits: u64,
    /// Prefills that started from a kept prompt the new one continues (only the rest ran).
    pub prefix_hits: u64,
    /// Prefills of one model and prompt that ran (from a kept prefix or from the start).
    pub misses: u64,
    /// Rows held (one per model and prompt).
    pub entries: usize,
    /// Bytes held (keys, values and logits).
    pub bytes: usize,
    /// Most bytes held (0: nothing is kept).
    pub budget: usize,
}

/// One model's prefilled prompt: its cache row and next-token logits `[1, vocab]`.
pub(crate) type Kept = (KvCache, Tensor<2>);

struct Entry {
    kept: Kept,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(usize, Vec<u32>), Entry>,
    /// Per model: the lengths of its kept prompts, with how many.
    lengths: HashMap<usize, BTreeMap<usize, usize>>,
    bytes: usize,
    budget: usize,
    clock: u64,
    hits: u64,
    prefix_hits: u64,
    misses: u64,
}

/// Prefilled rows per (model, prompt), shared by every session of a realigner.
pub(crate) struct PromptCache {
    inner: Mutex<Inner>,
}

impl PromptCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                budget,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (no update is half done).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anything may be kept.
    pub(crate) fn enabled(&self) -> bool {
        self.lock().budget > 0
    }

    /// The kept row of `model` for `prompt`, if any (counted as a hit or a miss).
    pub(crate) fn get(&self, model: usize, prompt: &[u32]) -> Option<Kept> {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        match g.entries.get_mut(&(model, prompt.to_vec())) {
            Some(e) => {
                e.used = now;
                let kept = e.kept.clone();
                g.hits += 1;
                Some(kept)
            }
            None => {
                g.misses += 1;
                None
            }
        }
    }

    /// The longest kept prompt of `model` that `prompt` continues (shorter than it), with its
    /// length: the rows to run the rest of `prompt` from (a prefix hit).
    pub(crate) fn longest_prefix(&self, model: usize, prompt: &[u32]) -> Option<(usize, Kept)> {
        let mut g = self.lock();
        let lengths: Vec<usize> = g
            .lengths
            .get(&model)?
            .range(1..prompt.len())
            .rev()
            .map(|(&l, _)| l)
            .collect();
        g.clock += 1;
        let now = g.clock;
        for l in lengths {
            if let Some(e) = g.entries.get_mut(&(model, prompt[..l].to_vec())) {
                e.used = now;
                let kept = e.kept.clone();
                g.prefix_hits += 1;
                return Some((l, kept));
            }
        }
        None
    }

    /// Keeps `kept` for `model` and `prompt`, dropping the least recently used rows to stay
    /// within the budget; a row larger than the whole budget is not kept.
    pub(crate) fn put(&self, model: usize, prompt: &[u32], kept: Kept) {
        let [rows, vocab] = kept.1.dims();
        let bytes = kept.0.byte_len() + rows * vocab * 4 + prompt.len() * 4;
        let mut g = self.lock();
        if bytes > g.budget {
            return;
        }
        g.clock += 1;
        let used = g.clock;
        g.remove(&(model, prompt.to_vec()));
        while g.bytes + bytes > g.budget {
            if !g.evict_oldest() {
                break;
            }
        }
        g.bytes += bytes;
        *g.lengths
            .entry(model)
            .or_default()
            .entry(prompt.len())
            .or_default() += 1;
        g.entries
            .insert((model, prompt.to_vec()), Entry { kept, bytes, used });
    }

    /// Sets the budget (0 keeps nothing), dropping rows to fit.
    pub(crate) fn set_budget(&self, budget: usize) {
        let mut g = self.lock();
        g.budget = budget;
        while g.bytes > g.budget {
            if !g.evict_oldest() {
                break;
            }
        }
    }

    /// Drops every kept row.
    pub(crate) fn clear(&self) {
        let mut g = self.lock();
        g.entries.clear();
        g.lengths.clear();
        g.bytes = 0;
    }

    pub(crate) fn stats(&self) -> PromptCacheStats {
        let g = self.lock();
        PromptCacheStats {
            hits: g.hits,
            prefix_hits: g.prefix_hits,
            misses: g.misses,
            entries: g.entries.len(),
            bytes: g.bytes,
            budget: g.budget,
        }
    }
}

impl Inner {
    /// Drops the least recently used row; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some(key) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        self.remove(&key);
        true
    }

    /// Drops one row, if kept.
    fn remove(&mut self, key: &(usize, Vec<u32>)) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.bytes -= e.bytes;
        if let Some(lengths) = self.lengths.get_mut(&key.0)
            && let Some(n) = lengths.get_mut(&key.1.len())
        {
            *n -= 1;
            if *n == 0 {
                lengths.remove(&key.1.len());
            }
        }
    }
}
