//! Whole-batch generation and token streams, as loops over a [`Session`].

use std::fmt;
use std::sync::Arc;

use dera_logits::{BoxedProcessor, LogitsProcessor};
use dera_mix::Mixture;
use serde::{Deserialize, Serialize};

use crate::session::{Finished, SequenceRequest, Session, StepEvent, TokenLogprob};
use crate::{Decoding, DeraError, Realigner};

/// A processor shared by every sequence of a [`GenerateOptions`] batch.
pub type SharedProcessor = Arc<dyn LogitsProcessor + Send + Sync>;

/// One sequence to generate: a prompt and the mixture to decode it with.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (already tokenized, special tokens included).
    pub prompt_ids: Vec<u32>,
    /// The lambda vector of this sequence.
    pub mixture: Mixture,
    /// Sampling seed; `None` derives one from [`GenerateOptions::decoding`]`.seed` and the request index.
    pub seed: Option<u64>,
}

/// Decoding controls shared by a batch: every sequence decodes with `decoding` (sequence `i`
/// with seed `decoding.seed + i` unless its [`Request::seed`] gives one) and runs
/// `processors`.
#[derive(Clone, Default)]
pub struct GenerateOptions {
    /// How each sequence decodes.
    pub decoding: Decoding,
    /// The caller's own processors, run on every sequence after the built-in penalties and
    /// constraints and before the built-in warpers (see [`Session`]).
    pub processors: Vec<SharedProcessor>,
}

impl GenerateOptions {
    /// Options of `decoding` with no processors of the caller's.
    pub fn new(decoding: Decoding) -> Self {
        Self {
            decoding,
            processors: Vec::new(),
        }
    }
}

impl fmt::Debug for GenerateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateOptions")
            .field("decoding", &self.decoding)
            .field(
                "processors",
                &self.processors.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
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
    /// The caller cancelled the sequence.
    Cancelled,
    /// The sequence failed (see [`Finished::error`]).
    Error,
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
    /// Per-token log-probabilities (and KL), when [`GenerateOptions`] asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
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

impl Realigner {
    /// Generates every request in one lockstep batch (a [`Session`] driven to the end).
    /// Requests with the same prompt share one prefill; different prompts are left-padded.
    /// `on_token` sees each token as it is chosen. The first sequence to fail fails the call.
    pub fn generate(
        &self,
        requests: &[Request],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(TokenEvent),
    ) -> Result<Vec<Generation>, DeraError> {
        let mut session = Session::fixed_batch(self);
        let seqs = requests
            .iter()
            .enumerate()
            .map(|(i, r)| SequenceRequest {
                prompt_ids: r.prompt_ids.clone(),
                mixture: r.mixture.clone(),
                decoding: Decoding {
                    seed: r.seed.unwrap_or(opts.decoding.seed.wrapping_add(i as u64)),
                    ..opts.decoding.clone()
                },
                processors: opts
                    .processors
                    .iter()
                    .map(|p| Box::new(Arc::clone(p)) as BoxedProcessor)
                    .collect(),
            })
            .collect();
        session.add_batch(seqs)?;
        let mut done: Vec<Option<Finished>> = (0..requests.len()).map(|_| None).collect();
        let mut steps = vec![0usize; requests.len()];
        loop {
            for f in session.take_finished() {
                if let Some(e) = f.error {
                    return Err(e);
                }
                let i = f.id.0 as usize;
                done[i] = Some(f);
            }
            if session.is_empty() {
                break;
            }
            for ev in session.step()? {
                let request = ev.id.0 as usize;
                on_token(TokenEvent {
                    request,
                    token: ev.token,
                    step: steps[request],
                });
                steps[request] += 1;
            }
        }
        let timing = session.timing();
        Ok(done
            .into_iter()
            .flatten()
            .map(|f| Generation {
                tokens: f.tokens,
                text: f.text,
                finish_reason: f.finish_reason,
                timing,
                logprobs: f.logprobs,
            })
            .collect())
    }

    /// Decodes one sequence as an iterator of its [`StepEvent`]s (the last one carries the
    /// finish reason); [`TokenIter::finished`] then gives the whole result.
    pub fn stream(&self, seq: SequenceRequest) -> Result<TokenIter<'_>, DeraError> {
        let mut session = Session::new(self);
        session.add(seq)?;
        Ok(TokenIter {
            session,
            finished: None,
            failed: false,
        })
    }
}

/// The tokens of one sequence as they are generated: an iterator over a one-sequence
/// [`Session`].
pub struct TokenIter<'r> {
    session: Session<'r>,
    finished: Option<Finished>,
    failed: bool,
}

impl TokenIter<'_> {
    /// The finished sequence, once the iterator has ended.
    pub fn finished(&mut self) -> Option<Finished> {
        self.collect_finished();
        self.finished.take()
    }

    fn collect_finished(&mut self) {
        if let Some(f) = self.session.take_finished().pop() {
            self.finished = Some(f);
        }
    }
}

impl Iterator for TokenIter<'_> {
    type Item = Result<StepEvent, DeraError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.collect_finished();
        if let Some(f) = self.finished.as_mut()
            && let Some(e) = f.error.take()
        {
            self.failed = true;
            return Some(Err(e));
        }
        if self.session.is_empty() {
            return None;
        }
        match self.session.step() {
            Ok(mut events) => match events.pop() {
                Some(ev) => Some(Ok(ev)),
                None => self.next(),
            },
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
