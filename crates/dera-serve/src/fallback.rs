//! A [`Decoder`] over `Realigner::generate`: each group of sequences admitted together is
//! generated as one lockstep batch on its first step, and its tokens are then handed out one
//! per step. Used until the step-level `dera::Session` is available.

use std::collections::{HashMap, VecDeque};

use dera::{FinishReason, GenerateOptions, Realigner, Request};

use crate::engine::{Decoder, Done, Finish, SeqSpec, Stepped};
use crate::error::ApiError;

struct Seq {
    spec: SeqSpec,
    /// Tokens and their text, once generated.
    tokens: Option<VecDeque<(u32, String)>>,
    result: Option<(String, usize, Finish)>,
}

/// Generates each admitted group as a batch, then replays it token by token.
pub struct GenerateDecoder<'r> {
    r: &'r Realigner,
    seqs: HashMap<u64, Seq>,
    order: Vec<u64>,
    next: u64,
    finished: Vec<Done>,
}

impl<'r> GenerateDecoder<'r> {
    /// A decoder over `r`.
    pub fn new(r: &'r Realigner) -> Self {
        Self {
            r,
            seqs: HashMap::new(),
            order: Vec::new(),
            next: 0,
            finished: Vec::new(),
        }
    }

    /// Generates every sequence that has no tokens yet, grouped by identical options.
    fn generate_new(&mut self) -> Result<(), String> {
        let new: Vec<u64> = self
            .order
            .iter()
            .copied()
            .filter(|id| self.seqs.get(id).is_some_and(|s| s.tokens.is_none()))
            .collect();
        let mut groups: Vec<(GenerateOptions, Vec<u64>)> = Vec::new();
        for id in new {
            let Some(s) = self.seqs.get(&id) else {
                continue;
            };
            let opts = GenerateOptions {
                max_new_tokens: s.spec.max_new_tokens,
                sampling: s.spec.sampling.clone(),
                greedy: s.spec.greedy,
                seed: 0,
                stop_strings: s.spec.stop.clone(),
                stop_on_eos: true,
            };
            match groups.iter_mut().find(|(o, _)| {
                o.max_new_tokens == opts.max_new_tokens
                    && o.sampling == opts.sampling
                    && o.greedy == opts.greedy
                    && o.stop_strings == opts.stop_strings
            }) {
                Some((_, ids)) => ids.push(id),
                None => groups.push((opts, vec![id])),
            }
        }
        let tok = self.r.tokenizer().map_err(|e| e.to_string())?;
        for (opts, ids) in groups {
            let requests: Vec<Request> = ids
                .iter()
                .filter_map(|id| self.seqs.get(id))
                .map(|s| Request {
                    prompt_ids: s.spec.prompt_ids.clone(),
                    mixture: s.spec.mixture.clone(),
                    seed: Some(s.spec.seed),
                })
                .collect();
            let gens = self
                .r
                .generate(&requests, &opts, |_| {})
                .map_err(|e| e.to_string())?;
            for (id, g) in ids.iter().zip(gens) {
                let Some(s) = self.seqs.get_mut(id) else {
                    continue;
                };
                // Text per token, never past the final (stop-cut) text.
                let mut stream = tok.stream();
                let mut emitted = 0usize;
                let mut out = VecDeque::with_capacity(g.tokens.len());
                for (i, &t) in g.tokens.iter().enumerate() {
                    let mut piece = stream.push(t).ok().flatten().unwrap_or_default();
                    if i + 1 == g.tokens.len() {
                        piece.push_str(&stream.finish().ok().flatten().unwrap_or_default());
                    }
                    let end = (emitted + piece.len()).min(g.text.len());
                    let text = g.text.get(emitted..end).unwrap_or_default().to_string();
                    emitted = end;
                    out.push_back((t, text));
                }
                let finish = match g.finish_reason {
                    FinishReason::Length => Finish::Length,
                    _ => Finish::Stop,
                };
                s.result = Some((g.text, g.tokens.len(), finish));
                s.tokens = Some(out);
            }
        }
        Ok(())
    }
}

impl Decoder for GenerateDecoder<'_> {
    fn add_batch(&mut self, seqs: Vec<SeqSpec>) -> Result<Vec<u64>, ApiError> {
        let mut ids = Vec::with_capacity(seqs.len());
        for spec in seqs {
            let id = self.next;
            self.next += 1;
            self.seqs.insert(
                id,
                Seq {
                    spec,
                    tokens: None,
                    result: None,
                },
            );
            self.order.push(id);
            ids.push(id);
        }
        Ok(ids)
    }

    fn step(&mut self) -> Result<Vec<Stepped>, String> {
        self.generate_new()?;
        let mut events = Vec::new();
        let mut ended = Vec::new();
        for &id in &self.order {
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            if let Some(q) = s.tokens.as_mut()
                && let Some((token, text)) = q.pop_front()
            {
                events.push(Stepped {
                    id,
                    token,
                    text,
                    logprob: None,
                });
                if q.is_empty() {
                    ended.push(id);
                }
            }
        }
        for id in ended {
            if let Some(s) = self.seqs.remove(&id)
                && let Some((text, completion_tokens, finish)) = s.result
            {
                self.finished.push(Done {
                    id,
                    text,
                    completion_tokens,
                    prompt_tokens: s.spec.prompt_ids.len(),
                    finish,
                    error: None,
                });
            }
        }
        self.order.retain(|id| self.seqs.contains_key(id));
        Ok(events)
    }

    fn cancel(&mut self, id: u64) -> bool {
        let Some(s) = self.seqs.remove(&id) else {
            return false;
        };
        self.order.retain(|&x| x != id);
        self.finished.push(Done {
            id,
            text: String::new(),
            completion_tokens: 0,
            prompt_tokens: s.spec.prompt_ids.len(),
            finish: Finish::Cancelled,
            error: None,
        });
        true
    }

    fn take_finished(&mut self) -> Vec<Done> {
        std::mem::take(&mut self.finished)
    }

    fn live(&self) -> usize {
        self.seqs.len()
    }
}
