//! Prefilled prompts kept for later requests.
//!
//! A model's keys and values for a prompt, and its next-token logits after it, do not depend on
//! the lambda of the request or on its sampling options: a sweep that sends one prompt at
//! several lambdas, a client that asks again, or `n` choices sent as separate requests prefill
//! the same rows. [`PromptCache`] keeps them, per model and exact prompt, within a byte budget
//! (least recently used first out), and [`crate::Session`] joins a kept row instead of running
//! the prompt again, or, for a prompt that continues a kept one (the next turn of a chat) or
//! shares its first tokens with one (a common system prompt), runs only the rest from the kept
//! rows cut to the shared part. A row's bits are the same alone or in a left-padded batch, so a sequence
//! decodes the same tokens whether its prompt was kept or not.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use dera_models::KvCache;
use dera_models::burn::tensor::Tensor;

/// Bytes of prefilled prompts a [`crate::Realigner`] keeps unless told otherwise: 64 MiB.
pub const PROMPT_CACHE_BYTES: usize = 64 << 20;

/// What the prompt cache holds and how it has served ([`crate::Realigner::prompt_cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptCacheStats {
    /// Prefills of one model and prompt served from the cache.
    pub hits: u64,
    /// Prefills that started from the kept rows of a prompt the new one continues or shares
    /// its first tokens with (only the rest ran).
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
    prompt: Arc<[u32]>,
    bytes: usize,
    used: u64,
}

/// Tokens per block of the index of prompt beginnings.
const BLOCK: usize = 16;

/// Most kept-prompt lengths tried when looking for a whole kept prompt that a new one continues
/// (longer shared beginnings are found through the block index whatever the count).
const LENGTHS: usize = 64;

/// Hashes of a prompt's first 16, 32, ... tokens (`blocks` of them), each continuing the last.
fn block_hashes(prompt: &[u32], blocks: usize) -> Vec<u64> {
    let mut h = DefaultHasher::new();
    prompt
        .chunks_exact(BLOCK)
        .take(blocks)
        .map(|b| {
            b.hash(&mut h);
            h.finish()
        })
        .collect()
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(usize, Vec<u32>), Entry>,
    /// Per model: the lengths of its kept prompts, with how many.
    lengths: HashMap<usize, BTreeMap<usize, usize>>,
    /// (model, hash of a prompt's first `16 b` tokens) -> the latest kept prompt that begins so.
    blocks: HashMap<(usize, u64), Arc<[u32]>>,
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

    /// The rows to run the rest of `prompt` from, for `model`: the longest beginning of
    /// `prompt` (shorter than it) that a kept prompt covers, either a whole kept prompt that
    /// `prompt` continues, or the first tokens a kept prompt shares with it (at least one
    /// block of 16, found through the block index), with the kept rows cut to them (a
    /// position's keys and values depend only on the tokens up to it). A prefix hit.
    pub(crate) fn longest_start(&self, model: usize, prompt: &[u32]) -> Option<(usize, KvCache)> {
        let mut g = self.lock();
        let mut best: Option<(usize, Vec<u32>)> = None;
        // Whole kept prompts that `prompt` continues, longest first (the previous turn of a
        // chat is the longest kept prompt shorter than the next); at most `LENGTHS` lengths
        // are tried, so a miss costs a bounded number of lookups.
        if let Some(lengths) = g.lengths.get(&model) {
            let lengths: Vec<usize> = lengths
                .range(1..prompt.len())
                .rev()
                .take(LENGTHS)
                .map(|(&l, _)| l)
                .collect();
            if let Some(l) = lengths
                .into_iter()
                .find(|&l| g.entries.contains_key(&(model, prompt[..l].to_vec())))
            {
                best = Some((l, prompt[..l].to_vec()));
            }
        }
        // Kept prompts sharing whole blocks with `prompt`, most blocks first; the shared part
        // then grows token by token (leaving at least one token of `prompt` to run).
        let blocks = (prompt.len() - 1) / BLOCK;
        let hashes = block_hashes(prompt, blocks);
        for (b, h) in hashes.iter().enumerate().rev() {
            let n = (b + 1) * BLOCK;
            if best.as_ref().is_some_and(|(l, _)| *l >= prompt.len() - 1) {
                break;
            }
            let Some(p) = g.blocks.get(&(model, *h)) else {
                continue;
            };
            if p.len() < n || p[..n] != prompt[..n] {
                continue; // another beginning with the same hash
            }
            let limit = p.len().min(prompt.len() - 1);
            let mut l = n;
            while l < limit && p[l] == prompt[l] {
                l += 1;
            }
            if best.as_ref().is_none_or(|(bl, _)| l > *bl) {
                best = Some((l, p.to_vec()));
            }
            break;
        }
        let (l, key) = best?;
        g.clock += 1;
        let now = g.clock;
        let e = g.entries.get_mut(&(model, key))?;
        e.used = now;
        let cache = e.kept.0.clone();
        g.prefix_hits += 1;
        let pad = cache.padding().first().copied().unwrap_or(0);
        Some((l, cache.truncate(pad + l)))
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
        let shared: Arc<[u32]> = prompt.into();
        for h in block_hashes(prompt, prompt.len() / BLOCK) {
            g.blocks.insert((model, h), shared.clone());
        }
        let entry = Entry {
            kept,
            prompt: shared,
            bytes,
            used,
        };
        g.entries.insert((model, prompt.to_vec()), entry);
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
        g.blocks.clear();
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
        for h in block_hashes(&e.prompt, e.prompt.len() / BLOCK) {
            if self
                .blocks
                .get(&(key.0, h))
                .is_some_and(|p| Arc::ptr_eq(p, &e.prompt))
            {
                self.blocks.remove(&(key.0, h));
            }
        }
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
