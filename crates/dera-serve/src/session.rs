//! The [`Decoder`] of the server: a `dera::Session` (continuous batching over one
//! `Realigner`).

use dera::{DeraError, FinishReason, Realigner, SeqId, SequenceRequest, Session};

use crate::engine::{Decoder, Done, Finish, SeqSpec, Stepped, TokenLogprob};
use crate::error::ApiError;

/// A session driven step by step by the engine loop.
pub struct SessionDecoder<'r> {
    session: Session<'r>,
    realigner: &'r Realigner,
}

impl<'r> SessionDecoder<'r> {
    /// An empty session over `r`.
    pub fn new(r: &'r Realigner) -> Self {
        Self {
            session: Session::new(r),
            realigner: r,
        }
    }
}

fn request(spec: SeqSpec) -> SequenceRequest {
    SequenceRequest::with(spec.prompt_ids, spec.mixture, spec.decoding)
}

/// The engine's log-probability record as the server's.
pub(crate) fn logprob(t: dera::TokenLogprob) -> TokenLogprob {
    TokenLogprob {
        token: t.token,
        logprob: t.logprob,
        top: t.top,
        kl_to_reference: t.kl_to_reference,
    }
}

impl Decoder for SessionDecoder<'_> {
    fn add_batch(&mut self, seqs: Vec<SeqSpec>) -> Result<Vec<u64>, ApiError> {
        let reqs = seqs.into_iter().map(request).collect();
        match self.session.add_batch(reqs) {
            Ok(ids) => Ok(ids.into_iter().map(|SeqId(id)| id).collect()),
            Err(e @ DeraError::Context { .. }) => {
                Err(ApiError::invalid("prompt", e.to_string()).with_code("context_length_exceeded"))
            }
            Err(e) => Err(ApiError::invalid("", e.to_string())),
        }
    }

    fn step(&mut self) -> Result<Vec<Stepped>, String> {
        let events = self.session.step().map_err(|e| e.to_string())?;
        Ok(events
            .into_iter()
            .map(|ev| Stepped {
                id: ev.id.0,
                token: ev.token,
                text: ev.text,
                logprob: ev.logprob.map(logprob),
            })
            .collect())
    }

    fn cancel(&mut self, id: u64) -> bool {
        self.session.cancel(SeqId(id))
    }

    fn take_finished(&mut self) -> Vec<Done> {
        self.session
            .take_finished()
            .into_iter()
            .map(|f| {
                let finish = match f.finish_reason {
                    FinishReason::Eos | FinishReason::StopString => Finish::Stop,
                    FinishReason::Length => Finish::Length,
                    FinishReason::Cancelled | FinishReason::Error => Finish::Cancelled,
                };
                let error = match (f.finish_reason, f.error) {
                    (_, Some(e)) => Some(e.to_string()),
                    (FinishReason::Error, None) => Some("the sequence failed".to_string()),
                    _ => None,
                };
                Done {
                    id: f.id.0,
                    completion_tokens: f.tokens.len(),
                    text: f.text,
                    prompt_tokens: f.prompt_tokens,
                    finish,
                    error,
                }
            })
            .collect()
    }

    fn live(&self) -> usize {
        self.session.live()
    }

    fn prompt_cache(&self) -> Option<dera::PromptCacheStats> {
        Some(self.realigner.prompt_cache_stats())
    }
}
