//! Several batches side by side (`dera serve --shards N`): each shard is its own [`Decoder`]
//! (its own `dera::Session` and KV caches); new requests go to the shard with the fewest live
//! sequences, and a step runs every busy shard at once, one rayon task each, its products on
//! its own thread.
//!
//! When the weights stay in the CPU's cache (small models), a step is compute-bound and a
//! batch saves no memory traffic: shards then keep every core busy (a model's pass is one task,
//! so three passes on two cores left one core idle a third of each step). A large model's step
//! reads its weights once per shard, so there one batch is best. A sequence's tokens do not
//! depend on its shard: a row's bits are the same alone or in any batch.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::engine::{Decoder, Done, SeqSpec, Stepped};
use crate::error::ApiError;

/// One shard's part of an `add_batch`: the positions it took and its ids for them.
type Placed = (Vec<usize>, Result<Vec<u64>, ApiError>);

/// [`Decoder`]s side by side behind one [`Decoder`]: ids are the shards' ids renumbered.
pub struct Shards<D> {
    shards: Vec<D>,
    /// Our id -> (shard, the shard's id).
    ids: HashMap<u64, (usize, u64)>,
    /// Per shard: its id -> ours.
    back: Vec<HashMap<u64, u64>>,
    next: u64,
}

impl<D: Decoder + Send> Shards<D> {
    /// Shards over `decoders` (at least one).
    ///
    /// # Panics
    /// When `decoders` is empty.
    pub fn new(decoders: Vec<D>) -> Self {
        assert!(!decoders.is_empty(), "at least one shard");
        let back = decoders.iter().map(|_| HashMap::new()).collect();
        Self {
            shards: decoders,
            ids: HashMap::new(),
            back,
            next: 0,
        }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false (there is at least one shard).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Live sequences per shard.
    pub fn loads(&self) -> Vec<usize> {
        self.shards.iter().map(|d| d.live()).collect()
    }

    fn register(&mut self, shard: usize, local: u64) -> u64 {
        self.next += 1;
        let id = self.next;
        self.ids.insert(id, (shard, local));
        self.back[shard].insert(local, id);
        id
    }

    /// Which shard each sequence goes to: identical prompts stay together (they share one
    /// prefill), each group on the shard with the fewest sequences so far.
    fn place(&self, seqs: &[SeqSpec]) -> Vec<usize> {
        let mut load = self.loads();
        let mut group_of: HashMap<&[u32], usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let g = *group_of.entry(&s.prompt_ids).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let mut shard_of = vec![0; seqs.len()];
        for g in groups {
            let best = (0..load.len()).min_by_key(|&s| (load[s], s)).unwrap_or(0);
            load[best] += g.len();
            for i in g {
                shard_of[i] = best;
            }
        }
        shard_of
    }
}

impl<D: Decoder + Send> Decoder for Shards<D> {
    fn add_batch(&mut self, seqs: Vec<SeqSpec>) -> Result<Vec<u64>, ApiError> {
        let shard_of = self.place(&seqs);
        let n = seqs.len();
        let mut parts: Vec<(Vec<usize>, Vec<SeqSpec>)> = self
            .shards
            .iter()
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        for (i, s) in seqs.into_iter().enumerate() {
            parts[shard_of[i]].0.push(i);
            parts[shard_of[i]].1.push(s);
        }
        let busy = parts.iter().filter(|p| !p.0.is_empty()).count();
        let add = |(d, (at, part)): (&mut D, (Vec<usize>, Vec<SeqSpec>))| {
            if at.is_empty() {
                return (at, Ok(Vec::new()));
            }
            (at, d.add_batch(part))
        };
        let results: Vec<Placed> = if busy > 1 {
            self.shards.par_iter_mut().zip(parts).map(add).collect()
        } else {
            self.shards.iter_mut().zip(parts).map(add).collect()
        };
        if let Some(e) = results.iter().find_map(|(_, r)| r.as_ref().err()) {
            let e = e.clone();
            // Nothing is added: the shards that took their part drop it again (never
            // registered here, their records are dropped by `take_finished`).
            for (shard, (_, r)) in results.into_iter().enumerate() {
                for local in r.unwrap_or_default() {
                    self.shards[shard].cancel(local);
                }
            }
            return Err(e);
        }
        let mut out = vec![0; n];
        for (shard, (at, r)) in results.into_iter().enumerate() {
            for (i, local) in at.into_iter().zip(r.unwrap_or_default()) {
                out[i] = self.register(shard, local);
            }
        }
        Ok(out)
    }

    fn step(&mut self) -> Result<Vec<Stepped>, String> {
        let busy = self.shards.iter().filter(|d| d.live() > 0).count();
        let step = |d: &mut D| (d.live() > 0).then(|| d.step());
        // Several busy shards: each one's products stay on its thread (its passes may still
        // go to idle cores), none waits on a pool the others hold. One busy shard uses them all.
        let results: Vec<Option<Result<Vec<Stepped>, String>>> = if busy > 1 {
            self.shards
                .par_iter_mut()
                .map(|d| dera::dera_models::serial_kernels(|| step(d)))
                .collect()
        } else {
            self.shards.iter_mut().map(step).collect()
        };
        let mut events = Vec::new();
        let mut failed = None;
        let mut ran = 0;
        for (shard, r) in results.into_iter().enumerate() {
            match r {
                None => {}
                Some(Ok(evs)) => {
                    ran += 1;
                    events.extend(evs.into_iter().filter_map(|mut ev| {
                        ev.id = *self.back[shard].get(&ev.id)?;
                        Some(ev)
                    }));
                }
                Some(Err(message)) => {
                    // That shard's sequences end with the error (see `Decoder::step`); the
                    // other shards go on.
                    tracing::error!(shard, %message, "a shard's decoding step failed");
                    failed.get_or_insert(message);
                }
            }
        }
        match failed {
            Some(message) if ran == 0 => Err(message),
            _ => Ok(events),
        }
    }

    fn cancel(&mut self, id: u64) -> bool {
        match self.ids.get(&id) {
            Some(&(shard, local)) => self.shards[shard].cancel(local),
            None => false,
        }
    }

    fn take_finished(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        for (shard, d) in self.shards.iter_mut().enumerate() {
            for mut done in d.take_finished() {
                let Some(id) = self.back[shard].remove(&done.id) else {
                    continue;
                };
                self.ids.remove(&id);
                done.id = id;
                out.push(done);
            }
        }
        out
    }

    fn live(&self) -> usize {
        self.shards.iter().map(|d| d.live()).sum()
    }

    /// The shards' sessions share their realigner's prompt cache: the first one reports it.
    fn prompt_cache(&self) -> Option<dera::PromptCacheStats> {
        self.shards.first().and_then(D::prompt_cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Finish;

    /// Emits `prompt[0] + k` at step k until `max_new_tokens`; refuses a prompt starting with
    /// 999; a step fails once a prompt starting with 666 is live.
    #[derive(Default)]
    struct Fake {
        live: Vec<(u64, u32, usize, usize)>,
        next: u64,
        finished: Vec<Done>,
        adds: Vec<Vec<Vec<u32>>>,
    }

    impl Decoder for Fake {
        fn add_batch(&mut self, seqs: Vec<SeqSpec>) -> Result<Vec<u64>, ApiError> {
            if seqs.iter().any(|s| s.prompt_ids[0] == 999) {
                return Err(ApiError::invalid("prompt", "999 refused"));
            }
            self.adds
                .push(seqs.iter().map(|s| s.prompt_ids.clone()).collect());
            Ok(seqs
                .iter()
                .map(|s| {
                    self.next += 1;
                    self.live
                        .push((self.next, s.prompt_ids[0], 0, s.decoding.max_new_tokens));
                    self.next
                })
                .collect())
        }

        fn step(&mut self) -> Result<Vec<Stepped>, String> {
            if self.live.iter().any(|l| l.1 == 666) {
                for (id, ..) in std::mem::take(&mut self.live) {
                    self.finished
                        .push(done(id, Finish::Cancelled, Some("boom")));
                }
                return Err("boom".into());
            }
            let mut out = Vec::new();
            for (id, first, k, max) in &mut self.live {
                out.push(Stepped {
                    id: *id,
                    token: *first + *k as u32,
                    text: String::new(),
                    logprob: None,
                });
                *k += 1;
                if k == max {
                    self.finished.push(done(*id, Finish::Length, None));
                }
            }
            self.live.retain(|l| l.2 < l.3);
            Ok(out)
        }

        fn cancel(&mut self, id: u64) -> bool {
            let before = self.live.len();
            self.live.retain(|l| l.0 != id);
            let gone = self.live.len() < before;
            if gone {
                self.finished.push(done(id, Finish::Cancelled, None));
            }
            gone
        }

        fn take_finished(&mut self) -> Vec<Done> {
            std::mem::take(&mut self.finished)
        }

        fn live(&self) -> usize {
            self.live.len()
        }
    }

    fn done(id: u64, finish: Finish, error: Option<&str>) -> Done {
        Done {
            id,
            text: String::new(),
            completion_tokens: 0,
            prompt_tokens: 1,
            finish,
            error: error.map(String::from),
        }
    }

    fn spec(first: u32, max: usize) -> SeqSpec {
        crate::engine::tests::test_spec(vec![first, 7], max)
    }

    fn shards(n: usize) -> Shards<Fake> {
        Shards::new((0..n).map(|_| Fake::default()).collect())
    }

    #[test]
    fn requests_spread_over_the_least_loaded_shards_and_same_prompts_stay_together() {
        let mut s = shards(3);
        let ids = s
            .add_batch(vec![
                spec(1, 3),
                spec(2, 3),
                spec(1, 3),
                spec(3, 3),
                spec(4, 3),
            ])
            .unwrap();
        // Prompt 1 twice (one group) on shard 0, then 2 and 3 on the empty shards, then 4 on
        // the least loaded (shard 1, tie broken by index).
        assert_eq!(s.loads(), vec![2, 2, 1]);
        assert_eq!(s.shards[0].adds, vec![vec![vec![1, 7], vec![1, 7]]]);
        assert_eq!(
            s.shards[1].adds,
            vec![vec![vec![2, 7], vec![4, 7]]],
            "{:?}",
            s.shards[1].adds
        );
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5);
        // Every event carries our id, and each sequence's tokens are its own.
        for k in 0..3 {
            let events = s.step().unwrap();
            assert_eq!(events.len(), 5);
            for (id, first) in ids.iter().zip([1, 2, 1, 3, 4]) {
                let ev = events.iter().find(|e| e.id == *id).unwrap();
                assert_eq!(ev.token, first + k);
            }
        }
        let mut finished: Vec<u64> = s.take_finished().iter().map(|d| d.id).collect();
        finished.sort_unstable();
        let mut all = ids;
        all.sort_unstable();
        assert_eq!(finished, all);
        assert_eq!(s.live(), 0);
        assert!(s.ids.is_empty() && s.back.iter().all(HashMap::is_empty));
    }

    #[test]
    fn a_refused_batch_adds_nothing_anywhere() {
        let mut s = shards(2);
        let e = s
            .add_batch(vec![spec(1, 3), spec(999, 3), spec(2, 3)])
            .unwrap_err();
        assert!(e.message.contains("999"));
        assert_eq!(s.live(), 0);
        assert!(
            s.take_finished().is_empty(),
            "the dropped part is not reported"
        );
        // The shards still work, and a later sequence is reported under its own id.
        let ids = s.add_batch(vec![spec(5, 1)]).unwrap();
        assert_eq!(s.step().unwrap()[0].id, ids[0]);
        assert_eq!(s.take_finished()[0].id, ids[0]);
    }

    #[test]
    fn cancel_reaches_the_right_shard_and_a_failing_shard_ends_alone() {
        let mut s = shards(2);
        let a = s.add_batch(vec![spec(1, 10)]).unwrap()[0];
        let b = s.add_batch(vec![spec(2, 10)]).unwrap()[0];
        assert_eq!(s.loads(), vec![1, 1]);
        assert!(s.cancel(b));
        assert!(!s.cancel(b + 100));
        let done = s.take_finished();
        assert_eq!((done[0].id, done[0].finish), (b, Finish::Cancelled));
        // A shard that fails ends its own sequences; the others' tokens still come.
        let bad = s.add_batch(vec![spec(666, 10)]).unwrap()[0];
        assert_eq!(s.loads(), vec![1, 1]);
        let events = s.step().unwrap();
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a]);
        let done = s.take_finished();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].id, done[0].error.as_deref()), (bad, Some("boom")));
        // When every busy shard fails, the step is an error.
        s.cancel(a);
        s.take_finished();
        s.add_batch(vec![spec(666, 10)]).unwrap();
        assert_eq!(s.step().unwrap_err(), "boom");
    }
}
