//! The engine thread: one [`Decoder`] (a `dera::Session`) fed over a channel, continuous
//! batching.
//!
//! Each loop iteration drops the sequences whose client went away, admits queued requests while
//! the batch has room (`max_batch` sequences), runs one decoding step for every live sequence,
//! and sends each token to its request's channel. Requests that arrive while others decode join
//! at the next step; finished sequences leave the batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use dera::{Decoding, Mixture};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

/// One sequence to decode, validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct SeqSpec {
    /// Prompt token ids (special tokens included).
    pub prompt_ids: Vec<u32>,
    /// The lambda vector.
    pub mixture: Mixture,
    /// Length, sampling (`greedy` for `temperature: 0`), seed, stop strings, what to record.
    pub decoding: Decoding,
}

/// The log-probability of a chosen token under the mixed distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The chosen token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely alternatives, most likely first.
    pub top: Vec<(u32, f32)>,
    /// `KL(p_mix || p_ref)` at this position, when asked for.
    pub kl_to_reference: Option<f64>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// EOS or a stop string (`"stop"`).
    Stop,
    /// `max_tokens` reached (`"length"`).
    Length,
    /// Cancelled (client gone, or the engine failed).
    Cancelled,
}

impl Finish {
    /// The OpenAI `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One token of one sequence, from [`Decoder::step`].
#[derive(Debug, Clone)]
pub struct Stepped {
    /// The sequence.
    pub id: u64,
    /// The token.
    pub token: u32,
    /// Newly decodable text (held back while it could still become a stop string).
    pub text: String,
    /// Its log-probability, when asked for.
    pub logprob: Option<TokenLogprob>,
}

/// A sequence that left the batch, from [`Decoder::take_finished`].
#[derive(Debug, Clone)]
pub struct Done {
    /// The sequence.
    pub id: u64,
    /// The whole generated text (cut before a stop string).
    pub text: String,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Set when the engine failed on this sequence (e.g. non-finite logits).
    pub error: Option<String>,
}

/// The step-level engine the server drives (implemented by `dera::Session`).
pub trait Decoder {
    /// Validates and prefills sequences (identical prompts may share one prefill); on error
    /// nothing is added.
    fn add_batch(&mut self, seqs: Vec<SeqSpec>) -> Result<Vec<u64>, ApiError>;
    /// One token for every live sequence.
    fn step(&mut self) -> Result<Vec<Stepped>, String>;
    /// Drops a sequence now; it comes back from `take_finished` as cancelled.
    fn cancel(&mut self, id: u64) -> bool;
    /// Sequences that ended since the last call.
    fn take_finished(&mut self) -> Vec<Done>;
    /// Live sequences.
    fn live(&self) -> usize;
    /// The prompt cache's counters, if the decoder has one.
    fn prompt_cache(&self) -> Option<dera::PromptCacheStats> {
        None
    }
}

/// What a request hears from the engine.
#[derive(Debug, Clone)]
pub enum Event {
    /// A token of choice `index`.
    Token {
        /// The choice (position in the request's sequences).
        index: usize,
        /// Its new text.
        text: String,
        /// Its log-probability, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Choice `index` ended.
    Done {
        /// The choice.
        index: usize,
        /// How.
        done: Done,
    },
    /// The engine refused the request (nothing was decoded).
    Rejected(ApiError),
}

/// A request for the engine: its sequences and where to send their events.
struct Job {
    seqs: Vec<SeqSpec>,
    tx: UnboundedSender<Event>,
    received: Instant,
    every_token: bool,
}

/// Submits requests to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
}

impl EngineHandle {
    /// Queues `seqs` (one request's choices) unless the queue holds `max_queue` sequences
    /// already (429). The receiver hears every token ([`Event::Token`]) when `every_token`
    /// (streams, log-probabilities), else only how each choice ended ([`Event::Done`] holds the
    /// whole text): a plain request then wakes its task once, not once per token. Dropping the
    /// receiver cancels the request.
    pub fn submit(
        &self,
        seqs: Vec<SeqSpec>,
        received: Instant,
        every_token: bool,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let n = seqs.len();
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= self.max_queue.max(n)).then_some(q + n)
            });
        if reserved.is_err() {
            return Err(ApiError::new(
                ErrorKind::QueueFull,
                format!(
                    "the queue is full ({} sequences waiting, --max-queue {}): retry later",
                    self.queued.load(Ordering::Acquire),
                    self.max_queue
                ),
            ));
        }
        let (tx, rx) = unbounded_channel();
        let job = Job {
            seqs,
            tx,
            received,
            every_token,
        };
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "the engine has stopped (the server is shutting down)",
            ));
        }
        Ok(rx)
    }

    /// Sequences waiting for a place in the batch.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Limits of the engine loop.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Most sequences decoding at once.
    pub max_batch: usize,
    /// Most sequences waiting.
    pub max_queue: usize,
}

/// The receiving end, to be run by [`run`] on the engine thread.
pub struct EngineQueue {
    jobs: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
}

/// A handle for the HTTP side and the queue for the engine thread.
pub fn channel(limits: EngineLimits) -> (EngineHandle, EngineQueue) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        EngineHandle {
            jobs: tx,
            queued: queued.clone(),
            max_queue: limits.max_queue,
        },
        EngineQueue { jobs: rx, queued },
    )
}

/// A sequence in the batch.
struct Live {
    job: u64,
    index: usize,
    received: Instant,
    last_token: Option<Instant>,
    error: Option<String>,
}

/// A request with sequences in the batch.
struct Running {
    tx: UnboundedSender<Event>,
    seqs: Vec<u64>,
    left: usize,
    every_token: bool,
}

/// Runs the loop until every [`EngineHandle`] is dropped and every request has finished.
pub fn run<D: Decoder>(
    decoder: &mut D,
    queue: EngineQueue,
    limits: EngineLimits,
    metrics: &Metrics,
) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut next_job = 0u64;
    let max_batch = limits.max_batch.max(1);
    loop {
        if decoder.live() == 0 && pending.is_empty() {
            metrics.set_batch(0);
            match queue.jobs.recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        while let Ok(job) = queue.jobs.try_recv() {
            pending.push_back(job);
        }

        // Clients that went away: drop their sequences now.
        pending.retain(|job| {
            let gone = job.tx.is_closed();
            if gone {
                queue.queued.fetch_sub(job.seqs.len(), Ordering::AcqRel);
                metrics.cancelled_before_start(job.seqs.len());
            }
            !gone
        });
        for run in running.values() {
            if run.tx.is_closed() {
                for &id in &run.seqs {
                    if live.contains_key(&id) {
                        decoder.cancel(id);
                    }
                }
            }
        }

        // Admit waiting requests while the batch has room (a request never waits for an
        // empty batch forever: an oversized one runs alone).
        let mut admit = Vec::new();
        let mut room = max_batch.saturating_sub(decoder.live());
        while let Some(job) = pending.front() {
            let n = job.seqs.len();
            let batch_empty = decoder.live() == 0 && admit.is_empty();
            if n > room && !batch_empty {
                break;
            }
            room = room.saturating_sub(n);
            if let Some(job) = pending.pop_front() {
                queue.queued.fetch_sub(n, Ordering::AcqRel);
                admit.push(job);
            }
        }
        if !admit.is_empty() {
            let start = Instant::now();
            add_jobs(decoder, admit, &mut next_job, &mut running, &mut live);
            metrics.admit(start.elapsed());
            if let Some(kept) = decoder.prompt_cache() {
                metrics.prompt_cache(&kept);
            }
        }
        metrics.set_queue(queue.queued.load(Ordering::Acquire));

        if decoder.live() > 0 {
            metrics.set_batch(decoder.live());
            let start = Instant::now();
            match decoder.step() {
                Ok(events) => {
                    metrics.step(start.elapsed(), events.len());
                    let now = Instant::now();
                    for ev in events {
                        let Some(seq) = live.get_mut(&ev.id) else {
                            continue;
                        };
                        match seq.last_token {
                            None => metrics.first_token(now - seq.received),
                            Some(t) => metrics.next_token(now - t),
                        }
                        seq.last_token = Some(now);
                        metrics.completion_tokens(1);
                        if let Some(run) = running.get(&seq.job)
                            && run.every_token
                        {
                            let sent = run.tx.send(Event::Token {
                                index: seq.index,
                                text: ev.text,
                                logprob: ev.logprob,
                            });
                            if sent.is_err() {
                                decoder.cancel(ev.id);
                            }
                        }
                    }
                }
                Err(message) => {
                    tracing::error!(%message, "decoding step failed; ending the batch");
                    let ids: Vec<u64> = live.keys().copied().collect();
                    for id in ids {
                        if let Some(seq) = live.get_mut(&id) {
                            seq.error = Some(message.clone());
                        }
                        decoder.cancel(id);
                    }
                }
            }
        }

        for done in decoder.take_finished() {
            let Some(seq) = live.remove(&done.id) else {
                continue;
            };
            let mut done = done;
            if done.error.is_none() {
                done.error = seq.error;
            }
            metrics.finished(&done);
            if let Some(run) = running.get_mut(&seq.job) {
                let _ = run.tx.send(Event::Done {
                    index: seq.index,
                    done,
                });
                run.left -= 1;
                if run.left == 0 {
                    running.remove(&seq.job);
                }
            }
        }
    }
    metrics.set_batch(0);
    metrics.set_queue(0);
}

/// Adds the admitted requests as one batch (identical prompts share a prefill); when that
/// fails, request by request, so that one bad request is refused alone.
fn add_jobs<D: Decoder>(
    decoder: &mut D,
    jobs: Vec<Job>,
    next_job: &mut u64,
    running: &mut HashMap<u64, Running>,
    live: &mut HashMap<u64, Live>,
) {
    let all: Vec<SeqSpec> = jobs.iter().flat_map(|j| j.seqs.iter().cloned()).collect();
    let ids = if jobs.len() > 1 {
        decoder.add_batch(all).ok()
    } else {
        None
    };
    match ids {
        Some(ids) => {
            let mut ids = ids.into_iter();
            for job in jobs {
                let n = job.seqs.len();
                let seqs: Vec<u64> = ids.by_ref().take(n).collect();
                register(job, seqs, next_job, running, live);
            }
        }
        None => {
            for job in jobs {
                let seqs = job.seqs.clone();
                match decoder.add_batch(seqs) {
                    Ok(ids) => register(job, ids, next_job, running, live),
                    Err(e) => {
                        let _ = job.tx.send(Event::Rejected(e));
                    }
                }
            }
        }
    }
}

fn register(
    job: Job,
    seqs: Vec<u64>,
    next_job: &mut u64,
    running: &mut HashMap<u64, Running>,
    live: &mut HashMap<u64, Live>,
) {
    let key = *next_job;
    *next_job += 1;
    for (index, &id) in seqs.iter().enumerate() {
        live.insert(
            id,
            Live {
                job: key,
                index,
                received: job.received,
                last_token: None,
                error: None,
            },
        );
    }
    running.insert(
        key,
        Running {
            tx: job.tx,
            left: seqs.len(),
            seqs,
            every_token: job.every_token,
        },
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Emits token `k` as text `"k "` for k in 0..max_new_tokens; a prompt starting with
    /// token 999 is refused.
    #[derive(Default)]
    struct Counting {
        live: Vec<(u64, usize, usize)>,
        next: u64,
        finished: Vec<Done>,
        batches: Vec<usize>,
        adds: usize,
    }

    impl Decoder for Counting {
        fn add_batch(&mut self, seqs: Vec<SeqSpec>) -> Result<Vec<u64>, ApiError> {
            self.adds += 1;
            if seqs.iter().any(|s| s.prompt_ids.first() == Some(&999)) {
                return Err(ApiError::invalid("prompt", "token 999 refused"));
            }
            Ok(seqs
                .iter()
                .map(|s| {
                    self.next += 1;
                    self.live.push((self.next, 0, s.decoding.max_new_tokens));
                    self.next
                })
                .collect())
        }

        fn step(&mut self) -> Result<Vec<Stepped>, String> {
            self.batches.push(self.live.len());
            let mut out = Vec::new();
            for (id, done, max) in &mut self.live {
                out.push(Stepped {
                    id: *id,
                    token: *done as u32,
                    text: format!("{done} "),
                    logprob: None,
                });
                *done += 1;
                if *done == *max {
                    self.finished.push(Done {
                        id: *id,
                        text: (0..*max).map(|k| format!("{k} ")).collect(),
                        completion_tokens: *max,
                        prompt_tokens: 1,
                        finish: Finish::Length,
                        error: None,
                    });
                }
            }
            self.live.retain(|(_, d, m)| d < m);
            Ok(out)
        }

        fn cancel(&mut self, id: u64) -> bool {
            let before = self.live.len();
            self.live.retain(|(i, _, _)| *i != id);
            let gone = self.live.len() < before;
            if gone {
                self.finished.push(Done {
                    id,
                    text: String::new(),
                    completion_tokens: 0,
                    prompt_tokens: 1,
                    finish: Finish::Cancelled,
                    error: None,
                });
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

    fn spec(first: u32, max: usize) -> SeqSpec {
        test_spec(vec![first], max)
    }

    /// A greedy sequence of `prompt` for at most `max` tokens (for the tests of the engine
    /// and of the shards).
    pub(crate) fn test_spec(prompt: Vec<u32>, max: usize) -> SeqSpec {
        SeqSpec {
            prompt_ids: prompt,
            mixture: Mixture::reference_only(),
            decoding: Decoding::greedy(max),
        }
    }

    fn drain(mut rx: UnboundedReceiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(ev);
        }
        out
    }

    fn text(events: &[Event], choice: usize) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Token { index, text, .. } if *index == choice => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn batches_up_to_max_batch_and_every_request_gets_its_tokens() {
        let limits = EngineLimits {
            max_batch: 3,
            max_queue: 100,
        };
        let (handle, queue) = channel(limits);
        let now = Instant::now();
        let a = handle
            .submit(vec![spec(1, 4), spec(1, 2)], now, true)
            .unwrap();
        let b = handle.submit(vec![spec(2, 3)], now, true).unwrap();
        let c = handle.submit(vec![spec(3, 2)], now, false).unwrap();
        assert_eq!(handle.queued(), 4);
        drop(handle);
        let metrics = Metrics::default();
        let mut d = Counting::default();
        run(&mut d, queue, limits, &metrics);
        // a and b fill the batch (3); c joins once a sequence has left.
        assert_eq!(d.batches, vec![3, 3, 3, 2]);
        let a = drain(a);
        assert_eq!(text(&a, 0), "0 1 2 3 ");
        assert_eq!(text(&a, 1), "0 1 ");
        let done: Vec<usize> = a
            .iter()
            .filter_map(|e| match e {
                Event::Done { index, done } => {
                    assert_eq!(done.finish, Finish::Length);
                    Some(*index)
                }
                _ => None,
            })
            .collect();
        assert_eq!(done, vec![1, 0]);
        assert_eq!(text(&drain(b), 0), "0 1 2 ");
        // c asked for no token events: only how it ended, with the whole text.
        let c = drain(c);
        assert!(matches!(&c[..], [Event::Done { index: 0, done }] if done.text == "0 1 "));
        assert!(
            metrics
                .render()
                .contains("dera_sequences_total{reason=\"length\"} 4")
        );
    }

    #[test]
    fn a_dropped_receiver_cancels_and_a_refused_request_is_alone() {
        let limits = EngineLimits {
            max_batch: 8,
            max_queue: 100,
        };
        let (handle, queue) = channel(limits);
        let now = Instant::now();
        let gone = handle.submit(vec![spec(1, 50)], now, true).unwrap();
        let bad = handle.submit(vec![spec(999, 5)], now, true).unwrap();
        let good = handle.submit(vec![spec(2, 5)], now, true).unwrap();
        drop(gone);
        drop(handle);
        let metrics = Metrics::default();
        let mut d = Counting::default();
        run(&mut d, queue, limits, &metrics);
        let bad = drain(bad);
        assert!(matches!(&bad[..], [Event::Rejected(e)] if e.message.contains("999")));
        assert_eq!(text(&drain(good), 0), "0 1 2 3 4 ");
        // The disconnected request never decoded past its first steps.
        assert!(d.batches.len() <= 5, "{:?}", d.batches);
        let text = metrics.render();
        assert!(
            text.contains("dera_sequences_total{reason=\"cancelled\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_full_queue_refuses_with_429() {
        let limits = EngineLimits {
            max_batch: 1,
            max_queue: 2,
        };
        let (handle, _queue) = channel(limits);
        let now = Instant::now();
        let _a = handle
            .submit(vec![spec(1, 1), spec(1, 1)], now, true)
            .unwrap();
        let e = handle.submit(vec![spec(1, 1)], now, true).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.message.contains("--max-queue 2"), "{}", e.message);
    }
}
