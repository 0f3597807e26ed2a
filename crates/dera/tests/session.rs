//! The step-level engine on the demo models: joining a running batch, cancelling, streaming,
//! stop strings, user processors and models inside the engine, and recorded log-probabilities.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dera::dera_logits::{Context, LogitsProcessor, SamplingOptions};
use dera::{
    Decoding, FinishReason, GenerateOptions, Mixture, Realigner, Request, SeqId, SequenceRequest,
    Session, SharedModel, VocabPolicy,
};
use dera_models::{CausalLm, Device, KvCache, ModelError, Tensor, TensorData};

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/models")
        .join(name)
}

fn demo() -> Realigner {
    Realigner::load(
        &asset("reference"),
        &[asset("aligned-length")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap()
}

fn ids(r: &Realigner, text: &str) -> Vec<u32> {
    r.tokenizer().unwrap().encode(text).unwrap()
}

fn greedy(prompt: Vec<u32>, lambda: f64, n: usize) -> SequenceRequest {
    SequenceRequest {
        decoding: Decoding {
            greedy: true,
            max_new_tokens: n,
            stop_on_eos: false,
            ..Default::default()
        },
        ..SequenceRequest::new(prompt, Mixture::single(lambda).unwrap())
    }
}

/// Tokens of one sequence decoded alone by `generate`.
fn alone(r: &Realigner, prompt: &[u32], lambda: f64, n: usize) -> Vec<u32> {
    let opts = GenerateOptions::new(Decoding {
        stop_on_eos: false,
        ..Decoding::greedy(n)
    });
    let req = Request {
        prompt_ids: prompt.to_vec(),
        mixture: Mixture::single(lambda).unwrap(),
        seed: None,
    };
    r.generate(&[req], &opts, |_| {}).unwrap().remove(0).tokens
}

fn run_to_end(s: &mut Session<'_>) -> Vec<dera::Finished> {
    let mut out = s.take_finished();
    while !s.is_empty() {
        s.step().unwrap();
        out.extend(s.take_finished());
    }
    out.sort_by_key(|f| f.id);
    out
}

#[test]
fn session_and_realigner_can_move_to_another_thread() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Session<'static>>();
    send::<SequenceRequest>();
    send::<dera::Finished>();
    send::<Realigner>();
    sync::<Realigner>();
}

/// Sequences added while others decode (shorter and longer prompts, each lambda, one that
/// runs only the aligned model and one only the reference) give the tokens they give alone.
#[test]
fn a_sequence_joining_mid_decode_gives_the_same_tokens_as_alone() {
    let r = demo();
    let a = ids(&r, "Tell me about the sea.");
    let b = ids(&r, "Why?");
    let c = ids(
        &r,
        "Write a long story about a small dog who lives by the river.",
    );
    let want = [
        alone(&r, &a, 0.5, 14),
        alone(&r, &b, 1.0, 9),
        alone(&r, &c, 0.0, 8),
        alone(&r, &b, 2.0, 6),
    ];
    let mut s = Session::new(&r);
    let ia = s.add(greedy(a.clone(), 0.5, 14)).unwrap();
    for _ in 0..3 {
        assert_eq!(s.step().unwrap().len(), 1);
    }
    let ib = s.add(greedy(b.clone(), 1.0, 9)).unwrap();
    s.step().unwrap();
    s.step().unwrap();
    let more = s
        .add_batch(vec![greedy(c.clone(), 0.0, 8), greedy(b.clone(), 2.0, 6)])
        .unwrap();
    assert_eq!(s.live(), 4);
    let done = run_to_end(&mut s);
    let got: Vec<(SeqId, Vec<u32>)> = done.into_iter().map(|f| (f.id, f.tokens)).collect();
    assert_eq!(
        got,
        vec![
            (ia, want[0].clone()),
            (ib, want[1].clone()),
            (more[0], want[2].clone()),
            (more[1], want[3].clone()),
        ]
    );
}

#[test]
fn cancelling_ends_one_sequence_and_the_others_go_on() {
    let r = demo();
    let a = ids(&r, "Tell me about the sea.");
    let b = ids(&r, "Why is the sky blue?");
    let mut s = Session::new(&r);
    let ia = s.add(greedy(a.clone(), 0.5, 10)).unwrap();
    let ib = s.add(greedy(b.clone(), 0.5, 10)).unwrap();
    s.step().unwrap();
    s.step().unwrap();
    assert!(s.cancel(ia));
    assert!(!s.cancel(ia), "a sequence is cancelled once");
    assert!(!s.cancel(SeqId(99)));
    let cancelled = s.take_finished();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].finish_reason, FinishReason::Cancelled);
    assert_eq!(cancelled[0].tokens, alone(&r, &a, 0.5, 2));
    assert_eq!(s.live(), 1);
    let rest = run_to_end(&mut s);
    assert_eq!(rest[0].id, ib);
    assert_eq!(rest[0].tokens, alone(&r, &b, 0.5, 10));
    assert_eq!(rest[0].finish_reason, FinishReason::Length);
}

/// Invalid requests are refused with the session unchanged.
#[test]
fn invalid_requests_leave_the_session_unchanged() {
    let r = demo();
    let mut s = Session::new(&r);
    s.add(greedy(ids(&r, "Hello"), 0.5, 3)).unwrap();
    let bad = [
        SequenceRequest::new(ids(&r, "Hi"), Mixture::new(vec![0.5, 0.5]).unwrap()),
        SequenceRequest::new(Vec::new(), Mixture::single(0.5).unwrap()),
        SequenceRequest {
            decoding: Decoding {
                max_new_tokens: 10_000,
                ..Default::default()
            },
            ..SequenceRequest::new(ids(&r, "Hi"), Mixture::single(0.5).unwrap())
        },
        SequenceRequest {
            decoding: Decoding {
                sampling: SamplingOptions {
                    top_p: Some(2.0),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..SequenceRequest::new(ids(&r, "Hi"), Mixture::single(0.5).unwrap())
        },
        SequenceRequest::new(vec![1, 99_999], Mixture::single(0.5).unwrap()),
    ];
    for req in bad {
        let e = s.add(req).unwrap_err();
        assert!(!e.to_string().is_empty());
        assert_eq!(s.live(), 1);
    }
    let done = run_to_end(&mut s);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tokens, alone(&r, &ids(&r, "Hello"), 0.5, 3));
}

/// The streamed pieces are the final text, and the stream is the sampled `generate`.
#[test]
fn streamed_text_equals_the_final_text_and_generate() {
    let r = demo();
    let prompt = ids(&r, "Once upon a time");
    let req = || SequenceRequest {
        decoding: Decoding {
            seed: 11,
            max_new_tokens: 24,
            sampling: SamplingOptions {
                temperature: Some(0.8),
                ..Default::default()
            },
            ..Default::default()
        },
        ..SequenceRequest::new(prompt.clone(), Mixture::single(0.7).unwrap())
    };
    let mut it = r.stream(req()).unwrap();
    let events: Vec<_> = it.by_ref().map(Result::unwrap).collect();
    let fin = it.finished().unwrap();
    let streamed: String = events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(streamed, fin.text);
    assert!(!fin.text.is_empty());
    assert_eq!(
        events.iter().map(|e| e.token).collect::<Vec<_>>(),
        fin.tokens
    );
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e.finish.is_none())
    );
    assert_eq!(events.last().unwrap().finish, Some(fin.finish_reason));
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: 24,
        seed: 11,
        sampling: req().decoding.sampling,
        ..Default::default()
    });
    let g = r
        .generate(
            &[Request {
                prompt_ids: prompt.clone(),
                mixture: Mixture::single(0.7).unwrap(),
                seed: None,
            }],
            &opts,
            |_| {},
        )
        .unwrap();
    assert_eq!(g[0].tokens, fin.tokens);
    assert_eq!(g[0].text, fin.text);
}

/// A stop string ends the sequence where it appears; nothing past it is ever streamed.
#[test]
fn stop_strings_end_the_stream_without_emitting_past_them() {
    let r = demo();
    let prompt = ids(&r, "Tell me about the sea.");
    let full = r
        .tokenizer()
        .unwrap()
        .decode(&alone(&r, &prompt, 0.5, 20))
        .unwrap();
    // A stop string from the middle of what the sequence says when not stopped.
    let mid = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[mid..].chars().take(3).collect();
    let cut = full.find(&stop).unwrap();
    let mut it = r
        .stream({
            let base = greedy(prompt, 0.5, 20);
            SequenceRequest {
                decoding: Decoding {
                    stop_strings: vec![stop.clone(), "never appears \u{1F600}".into()],
                    ..base.decoding
                },
                ..base
            }
        })
        .unwrap();
    let events: Vec<_> = it.by_ref().map(Result::unwrap).collect();
    let fin = it.finished().unwrap();
    assert_eq!(fin.finish_reason, FinishReason::StopString);
    assert_eq!(fin.text, full[..cut]);
    let streamed: String = events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(streamed, fin.text);
    assert!(!streamed.contains(&stop));
}

/// Bans every token but one: the engine runs it on every step of every sequence.
struct Force(u32, Arc<AtomicUsize>);

impl LogitsProcessor for Force {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        self.1.fetch_add(1, Ordering::Relaxed);
        for (i, x) in logits.iter_mut().enumerate() {
            if i != self.0 as usize {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    fn name(&self) -> &'static str {
        "Force"
    }
}

#[test]
fn a_user_processor_runs_inside_generate_and_the_session() {
    let r = demo();
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = GenerateOptions {
        decoding: Decoding {
            max_new_tokens: 5,
            stop_on_eos: false,
            seed: 3,
            ..Default::default()
        },
        processors: vec![Arc::new(Force(42, calls.clone()))],
    };
    let reqs: Vec<Request> = [0.0, 1.5]
        .iter()
        .map(|&l| Request {
            prompt_ids: ids(&r, "Hello there"),
            mixture: Mixture::single(l).unwrap(),
            seed: None,
        })
        .collect();
    let g = r.generate(&reqs, &opts, |_| {}).unwrap();
    assert!(g.iter().all(|g| g.tokens == [42; 5]));
    assert_eq!(calls.load(Ordering::Relaxed), 10);
    // Its place in the chain: after the penalties and constraints (min_new_tokens bans EOS,
    // which a processor cannot bring back), before the warpers (top-k of 1 keeps its choice).
    let mut s = Session::new(&r);
    s.add({
        let base = greedy(ids(&r, "Hello there"), 0.5, 3);
        SequenceRequest {
            decoding: Decoding {
                sampling: SamplingOptions {
                    top_k: Some(1),
                    ..Default::default()
                },
                ..base.decoding
            },
            processors: vec![Box::new(Force(7, calls.clone()))],
            ..base
        }
    })
    .unwrap();
    assert_eq!(run_to_end(&mut s)[0].tokens, [7, 7, 7]);
}

/// Adds a bias to one token's logit: a model written outside dera, mixed with loaded ones.
struct Biased {
    inner: SharedModel,
    token: u32,
    bias: f32,
}

impl CausalLm for Biased {
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }
    fn new_cache(&self) -> KvCache {
        self.inner.new_cache()
    }
    fn forward(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError> {
        let h = self.inner.forward(tokens, batch, cache, all_positions)?;
        let [b, t, v] = h.dims();
        let mut bias = vec![0f32; v];
        bias[self.token as usize] = self.bias;
        let bias = Tensor::<1>::from_data(TensorData::new(bias, [v]), self.device());
        Ok(h + bias.reshape([1, 1, v]).expand([b, t, v]))
    }
}

#[test]
fn a_user_model_mixes_with_a_loaded_one() {
    let loaded = dera_models::load(&asset("reference"), &Device::flex()).unwrap();
    let tokenizer = loaded.tokenizer.clone();
    let eos = loaded.eos_token_ids.clone();
    let reference: SharedModel = Arc::new(loaded.model);
    let user: SharedModel = Arc::new(Biased {
        inner: reference.clone(),
        token: 5,
        bias: 4.0,
    });
    let r = Realigner::from_parts(
        vec![("reference".into(), reference), ("biased".into(), user)],
        tokenizer,
        eos,
        VocabPolicy::Strict,
    )
    .unwrap();
    let prompt = ids(&r, "Tell me about the sea.");
    // (1 - l) h + l (h + b e_5) = h + l b e_5: the mixture is the reference with a bias l * b.
    let base = r
        .next_token_logprobs(&prompt, &Mixture::single(0.0).unwrap())
        .unwrap();
    let got = r
        .next_token_logprobs(&prompt, &Mixture::single(0.5).unwrap())
        .unwrap();
    let mut shifted: Vec<f32> = base.clone();
    shifted[5] += 2.0;
    let want = dera::dera_logits::log_softmax(&shifted);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
    // Inside a session, joining a running sequence: a huge lambda makes token 5 win.
    let mut s = Session::new(&r);
    let plain = s.add(greedy(prompt.clone(), 0.0, 6)).unwrap();
    s.step().unwrap();
    let pushed = s.add(greedy(prompt.clone(), 50.0, 4)).unwrap();
    let done = run_to_end(&mut s);
    assert_eq!(done[0].id, plain);
    assert_eq!(done[0].tokens, alone(&r, &prompt, 0.0, 6));
    assert_eq!(done[1].id, pushed);
    assert_eq!(done[1].tokens, [5; 4]);
}

/// Log-probabilities and KL recorded while generating are what scoring the output computes.
#[test]
fn recorded_logprobs_and_kl_match_scoring() {
    let r = demo();
    let prompt = ids(&r, "Why is the sky blue?");
    for lambda in [0.0, 0.6, 1.0, 2.0] {
        let mut s = Session::new(&r);
        s.add({
            let base = greedy(prompt.clone(), lambda, 8);
            SequenceRequest {
                decoding: Decoding {
                    logprobs: Some(3),
                    kl_to_reference: true,
                    ..base.decoding
                },
                ..base
            }
        })
        .unwrap();
        let f = run_to_end(&mut s).remove(0);
        let rec = f.logprobs.unwrap();
        assert_eq!(rec.len(), f.tokens.len());
        let score = r
            .score(&prompt, &f.tokens, &Mixture::single(lambda).unwrap())
            .unwrap();
        for (t, ((rec, lp), kl)) in rec
            .iter()
            .zip(&score.token_logprobs)
            .zip(&score.kl_to_reference)
            .enumerate()
        {
            assert!(
                (f64::from(rec.logprob) - lp).abs() < 1e-3,
                "{t}: {rec:?} {lp}"
            );
            let k = rec.kl_to_reference.unwrap();
            assert!((k - kl).abs() < 1e-3, "{t}: {k} vs {kl}");
            assert_eq!(rec.top.len(), 3);
            // Greedy picks the most likely token of the raw mixture.
            assert_eq!(rec.top[0].0, rec.token);
            assert!(rec.top.windows(2).all(|w| w[0].1 >= w[1].1));
        }
        if lambda == 0.0 {
            assert!(score.total_kl.abs() < 1e-6);
        }
    }
}

/// `prompt_logprobs` of prompt + output scores every token after the first; over the output it
/// is what decoding recorded (value and top tokens), and over the prompt what `score` gives.
#[test]
fn prompt_logprobs_score_every_token_as_decoding_records_them() {
    let r = demo();
    let prompt = ids(&r, "Why is the sky blue?");
    for lambda in [0.0, 1.0, 1.7] {
        let mixture = Mixture::single(lambda).unwrap();
        let mut s = Session::new(&r);
        let base = greedy(prompt.clone(), lambda, 6);
        s.add(SequenceRequest {
            decoding: Decoding {
                logprobs: Some(2),
                ..base.decoding
            },
            ..base
        })
        .unwrap();
        let f = run_to_end(&mut s).remove(0);
        let all: Vec<u32> = prompt.iter().chain(&f.tokens).copied().collect();
        let got = r.prompt_logprobs(&all, &mixture, 2).unwrap();
        assert_eq!(got.len(), all.len() - 1);
        assert!(got.iter().zip(&all[1..]).all(|(g, &t)| g.token == t));
        let (p, o) = got.split_at(prompt.len() - 1);
        for (g, rec) in o.iter().zip(f.logprobs.unwrap()) {
            assert!((g.logprob - rec.logprob).abs() < 1e-4, "{g:?} {rec:?}");
            let (a, b): (Vec<u32>, Vec<u32>) = (
                g.top.iter().map(|t| t.0).collect(),
                rec.top.iter().map(|t| t.0).collect(),
            );
            assert_eq!(a, b);
        }
        let scored = r.score(&prompt[..1], &prompt[1..], &mixture).unwrap();
        for (g, lp) in p.iter().zip(&scored.token_logprobs) {
            assert!((f64::from(g.logprob) - lp).abs() < 1e-4, "{g:?} {lp}");
            assert!(g.top.len() == 2 && g.top[0].1 >= g.top[1].1 && g.top[0].1 >= g.logprob);
        }
    }
    assert!(
        r.prompt_logprobs(&prompt[..1], &Mixture::single(1.0).unwrap(), 2)
            .unwrap()
            .is_empty()
    );
}

/// Adds to EOS's logit: without min_new_tokens it ends every sequence at once.
struct PreferEos(u32);

impl LogitsProcessor for PreferEos {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        logits[self.0 as usize] += 1e4;
    }
    fn name(&self) -> &'static str {
        "PreferEos"
    }
}

#[test]
fn min_new_tokens_holds_back_the_reference_eos() {
    let r = demo();
    let eos = r.eos_token_ids()[0];
    let run = |min: Option<usize>| {
        let opts = GenerateOptions {
            decoding: Decoding {
                max_new_tokens: 8,
                greedy: true,
                sampling: SamplingOptions {
                    min_new_tokens: min,
                    ..Default::default()
                },
                ..Default::default()
            },
            processors: vec![Arc::new(PreferEos(eos))],
        };
        let req = Request {
            prompt_ids: ids(&r, "Hello"),
            mixture: Mixture::single(0.5).unwrap(),
            seed: None,
        };
        r.generate(&[req], &opts, |_| {}).unwrap().remove(0)
    };
    let now = run(None);
    assert_eq!(
        (now.tokens.as_slice(), now.finish_reason),
        (&[eos][..], FinishReason::Eos)
    );
    let later = run(Some(3));
    assert_eq!(later.tokens.len(), 4);
    assert_eq!(later.tokens[3], eos);
    assert!(!later.tokens[..3].contains(&eos));
    assert_eq!(later.finish_reason, FinishReason::Eos);
}

/// Tokens and the bits of every recorded log-probability and KL of finished sequences.
fn outcome(done: &[dera::Finished]) -> Vec<(Vec<u32>, Vec<u32>)> {
    done.iter()
        .map(|f| {
            let bits = f
                .logprobs
                .iter()
                .flatten()
                .flat_map(|t| {
                    let kl = t.kl_to_reference.unwrap_or(0.0) as f32;
                    [t.logprob.to_bits(), kl.to_bits()]
                })
                .collect();
            (f.tokens.clone(), bits)
        })
        .collect()
}

/// A realigner with the default prompt cache and one that keeps nothing.
fn kept_and_fresh() -> (Realigner, Realigner) {
    let fresh = demo();
    fresh.set_prompt_cache_bytes(0);
    (demo(), fresh)
}

/// A greedy request recording log-probabilities (top 2) and the KL to the reference.
fn recorded(prompt: &[u32], lambda: f64, n: usize) -> SequenceRequest {
    {
        let base = greedy(prompt.to_vec(), lambda, n);
        SequenceRequest {
            decoding: Decoding {
                logprobs: Some(2),
                kl_to_reference: true,
                ..base.decoding
            },
            ..base
        }
    }
}

/// The same prompt at other lambdas (alone, and beside a new prompt in one admission) joins the
/// rows the first request prefilled: the same tokens, log-probabilities and KL to the bit as
/// a realigner that keeps nothing, with the prefills counted as hits.
#[test]
fn kept_prompts_decode_as_prompts_run_again() {
    let (kept, fresh) = kept_and_fresh();
    let run = |r: &Realigner| {
        let (p, q) = (ids(r, "The best way"), ids(r, "A fool and his money"));
        let t = ids(r, "Hi");
        assert!(t.len() < q.len());
        let req = |prompt: &[u32], lambda: f64| recorded(prompt, lambda, 12);
        let mut s = Session::new(r);
        s.add(req(&p, 1.0)).unwrap();
        let mut out = run_to_end(&mut s);
        // `p` kept; `q` and the shorter `t` run together (`t` left-padded, kept without it).
        s.add_batch(vec![req(&p, 2.0), req(&q, 0.5), req(&p, 0.0), req(&t, 1.0)])
            .unwrap();
        out.extend(run_to_end(&mut s));
        // A new session of the same realigner finds them too.
        let mut s = Session::new(r);
        s.add_batch(vec![req(&q, 1.5), req(&t, 0.5)]).unwrap();
        out.extend(run_to_end(&mut s));
        outcome(&out)
    };
    let (a, b) = (run(&kept), run(&fresh));
    assert_eq!(a, b);
    assert!(a.iter().all(|(tokens, _)| tokens.len() == 12));
    let (k, f) = (kept.prompt_cache_stats(), fresh.prompt_cache_stats());
    // The first admission runs both models on `p`; the second finds them (lambda 2 and 0
    // need both), runs `q` and `t`; the third finds `q` and `t`.
    assert_eq!((k.hits, k.misses), (6, 6), "{k:?}");
    assert!(
        k.entries == 6 && k.bytes > 0 && k.bytes <= k.budget,
        "{k:?}"
    );
    assert_eq!((f.hits, f.entries, f.bytes), (0, 0, 0), "{f:?}");
}

/// The prompt cache stays within its budget, dropping the least recently used rows, and keeps
/// nothing at 0.
#[test]
fn the_prompt_cache_stays_within_its_budget() {
    let r = demo();
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|i| ids(&r, &format!("Prompt number {i} is here")))
        .collect();
    let fill = |r: &Realigner| {
        for p in &prompts {
            let mut s = Session::new(r);
            s.add(greedy(p.clone(), 0.5, 1)).unwrap();
            run_to_end(&mut s);
        }
    };
    fill(&r);
    let all = r.prompt_cache_stats();
    assert_eq!(all.entries, 12, "{all:?}"); // 6 prompts x 2 models
    let budget = all.bytes / 3;
    r.set_prompt_cache_bytes(budget);
    let some = r.prompt_cache_stats();
    assert!(
        some.bytes <= budget && some.entries < 12 && some.entries > 0,
        "{some:?}"
    );
    fill(&r);
    let again = r.prompt_cache_stats();
    assert!(again.bytes <= budget, "{again:?}");
    // The most recent prompt is kept: running it again is a hit.
    let before = again.hits;
    let mut s = Session::new(&r);
    s.add(greedy(prompts[5].clone(), 0.5, 1)).unwrap();
    run_to_end(&mut s);
    assert_eq!(r.prompt_cache_stats().hits, before + 2);
    r.set_prompt_cache_bytes(0);
    let none = r.prompt_cache_stats();
    assert_eq!((none.entries, none.bytes, none.budget), (0, 0, 0));
}

/// A prompt that continues a kept one (the next turn of a chat) runs only its rest from the
/// kept rows, alone or beside prompts that run from the start: the same tokens,
/// log-probabilities and KL to the bit as prefilling it whole.
#[test]
fn a_prompt_continuing_a_kept_one_runs_only_its_rest() {
    let (kept, fresh) = kept_and_fresh();
    let run = |r: &Realigner| {
        let a = ids(r, "The best way to learn");
        let more = ids(r, " is to ask a friend");
        let (mut ab, mut ab2) = (a.clone(), a.clone());
        ab.extend(&more);
        ab2.extend(&more[..2]);
        let c = ids(r, "Once");
        let req = |prompt: &[u32], lambda: f64| recorded(prompt, lambda, 8);
        let mut out = Vec::new();
        let mut s = Session::new(r);
        s.add(req(&a, 1.0)).unwrap();
        out.extend(run_to_end(&mut s));
        s.add(req(&ab, 0.5)).unwrap();
        out.extend(run_to_end(&mut s));
        // Continued (from `a`, the longest kept prefix of `ab2`) beside one run from the start.
        s.add_batch(vec![req(&c, 2.0), req(&ab2, 1.5)]).unwrap();
        out.extend(run_to_end(&mut s));
        outcome(&out)
    };
    assert_eq!(run(&kept), run(&fresh));
    let k = kept.prompt_cache_stats();
    // `ab` and `ab2` continue `a` on both models.
    assert_eq!(k.prefix_hits, 4, "{k:?}");
    assert_eq!(k.entries, 8, "{k:?}");
}

/// Prompts that only share their first tokens (a common system prompt, never sent alone) run
/// the rest from the kept rows of the first, cut to the shared part: the same tokens,
/// log-probabilities and KL to the bit as prefilling them whole.
#[test]
fn prompts_sharing_a_beginning_run_only_the_rest() {
    let (kept, fresh) = kept_and_fresh();
    let run = |r: &Realigner| {
        let system = ids(
            r,
            "You are a careful assistant who answers questions about history and science in plain words.",
        );
        assert!(system.len() >= 20, "{}", system.len());
        let ask = |q: &str| {
            let mut p = system.clone();
            p.extend(ids(r, q));
            p
        };
        let (q1, q2, q3) = (
            ask(" Who was Newton?"),
            ask(" What is a star?"),
            ask(" Why?"),
        );
        let mut out = Vec::new();
        let mut s = Session::new(r);
        s.add(recorded(&q1, 1.0, 8)).unwrap();
        out.extend(run_to_end(&mut s));
        s.add(recorded(&q2, 0.5, 8)).unwrap();
        out.extend(run_to_end(&mut s));
        s.add_batch(vec![
            recorded(&q3, 2.0, 8),
            recorded(&ids(r, "Once"), 1.0, 8),
        ])
        .unwrap();
        out.extend(run_to_end(&mut s));
        outcome(&out)
    };
    assert_eq!(run(&kept), run(&fresh));
    // `q2` and `q3` start from `q1`'s (or `q2`'s) rows on both models.
    let k = kept.prompt_cache_stats();
    assert_eq!((k.hits, k.prefix_hits), (0, 4), "{k:?}");
}
