//! Shared-base DeRa: the reference and LoRA adapters over it run as one pass per step (rows of
//! each model stacked into one batch over the base weights). The results must equal the
//! engine running every model as a pass of its own (`Realigner::set_shared_base(false)`):
//! identical greedy tokens, log-probabilities within 1e-5, through `generate`, a `Session` whose
//! sequences join, cancel and finish at different steps, `next_token_logprobs` and `score`.

use std::path::{Path, PathBuf};

use dera::{
    Decoding, GenerateOptions, Mixture, Realigner, Request, SeqId, SequenceRequest, Session,
    StepEvent, VocabPolicy,
};
use dera_models::Device;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The golden Llama with two adapters (attention r4, MLP r2) and, when `full`, a full aligned
/// checkpoint as a third aligned model; `shared` turns shared-base passes on or off.
fn realigner(full: bool, shared: bool) -> Realigner {
    let fx = fixtures();
    let mut aligned = vec![
        fx.join("lora/adapters/llama_attn_r4"),
        fx.join("lora/adapters/llama_mlp_r2"),
    ];
    if full {
        aligned.push(fx.join("golden/models/llama_aligned_a"));
    }
    let mut r = Realigner::load(
        &fx.join("golden/models/llama"),
        &aligned,
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    r.set_shared_base(shared);
    r
}

fn mixture(l: &[f64]) -> Mixture {
    Mixture::new(l.to_vec()).unwrap()
}

fn close(a: f32, b: f32, what: &str) {
    assert!((a - b).abs() <= 1e-5, "{what}: {a} vs {b}");
}

fn same_events(a: &[StepEvent], b: &[StepEvent], at: &str) {
    assert_eq!(a.len(), b.len(), "{at}: number of events");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.id, x.token, x.finish), (y.id, y.token, y.finish), "{at}");
        let (Some(lx), Some(ly)) = (&x.logprob, &y.logprob) else {
            panic!("{at}: log-probs were asked for");
        };
        close(lx.logprob, ly.logprob, at);
        for ((tx, vx), (ty, vy)) in lx.top.iter().zip(&ly.top) {
            assert_eq!(tx, ty, "{at}: top tokens");
            close(*vx, *vy, at);
        }
        match (lx.kl_to_reference, ly.kl_to_reference) {
            (Some(kx), Some(ky)) => assert!((kx - ky).abs() <= 1e-5, "{at}: KL {kx} vs {ky}"),
            (None, None) => {}
            other => panic!("{at}: KL {other:?}"),
        }
    }
}

#[test]
fn adapters_over_the_reference_form_one_group_and_full_checkpoints_stay_apart() {
    assert_eq!(realigner(false, true).adapter_groups(), vec![vec![0, 1, 2]]);
    let r = realigner(true, true);
    assert_eq!(r.adapter_groups(), vec![vec![0, 1, 2]]);
    assert!(r.shared_base());
    // Two separately loaded full checkpoints share nothing.
    let fx = fixtures();
    let full = Realigner::load(
        &fx.join("golden/models/llama"),
        &[fx.join("golden/models/llama_aligned_a")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    assert!(full.adapter_groups().is_empty());
    // The weights a step reads: each base once (the adapters add none), each full checkpoint.
    let one = dera_models::ModelConfig::from_dir(&fx.join("golden/models/llama"))
        .unwrap()
        .matrix_params();
    assert_eq!(realigner(false, true).weight_params(), Some(one));
    assert_eq!(r.weight_params(), Some(2 * one));
    assert_eq!(full.weight_params(), Some(2 * one));
    assert!(full.fits_in_cache());
}

/// Models loaded with `Realigner::load_options` (panels for a mixture in cache) give
/// `from_models` the products of `load_with`: the same bits; loaded without them, the same
/// numbers to rounding.
#[test]
fn from_models_with_load_options_multiplies_as_load_with() {
    let fx = fixtures();
    let (reference, aligned) = (
        fx.join("golden/models/llama"),
        vec![fx.join("golden/models/llama_aligned_a")],
    );
    let device = Device::flex();
    let opts = Realigner::load_options(&reference, &aligned, &dera::LoadOptions::default());
    assert!(opts.panels, "a mixture this small stays in cache");
    let loaded = |o: &dera::LoadOptions| {
        let models = std::iter::once(&reference)
            .chain(&aligned)
            .map(|d| dera_models::load_with(d, &device, o).unwrap())
            .collect();
        Realigner::from_models(models, VocabPolicy::Strict).unwrap()
    };
    let by_load = Realigner::load(&reference, &aligned, &device, VocabPolicy::Strict).unwrap();
    let prompt = [72, 101, 108, 108, 111];
    let m = mixture(&[1.5]);
    let want = by_load.next_token_logprobs(&prompt, &m).unwrap();
    let same = loaded(&opts).next_token_logprobs(&prompt, &m).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&same), bits(&want));
    let plain = loaded(&dera::LoadOptions::default())
        .next_token_logprobs(&prompt, &m)
        .unwrap();
    for (a, b) in plain.iter().zip(&want) {
        close(*a, *b, "without panels");
    }
    // (Panels sum in another order: the bit comparison above can tell them apart.)
    assert_ne!(bits(&plain), bits(&want));
}

/// A batch of different prompts (left-padded) and mixtures: rows that need only the reference,
/// only one adapter, both adapters, and the full model too; greedy with log-probs and KL.
#[test]
fn generate_matches_separate_passes() {
    let prompts: [&[u32]; 3] = [&[72, 101, 108, 108, 111], &[3, 9, 27], &[72, 101, 108]];
    let lambdas: [&[f64]; 6] = [
        &[0.0, 0.0, 0.0],
        &[1.0, 0.0, 0.0],
        &[0.0, 1.0, 0.5],
        &[0.5, 0.75, 0.0],
        &[2.0, -0.5, 0.25],
        &[0.3, 0.3, 0.3],
    ];
    let requests: Vec<Request> = lambdas
        .iter()
        .enumerate()
        .map(|(i, l)| Request {
            prompt_ids: prompts[i % prompts.len()].to_vec(),
            mixture: mixture(l),
            seed: None,
        })
        .collect();
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: 10,
        greedy: true,
        stop_on_eos: false,
        logprobs: Some(3),
        kl_to_reference: true,
        ..Default::default()
    });
    let one = realigner(true, true)
        .generate(&requests, &opts, |_| {})
        .unwrap();
    let two = realigner(true, false)
        .generate(&requests, &opts, |_| {})
        .unwrap();
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        assert_eq!(a.tokens, b.tokens, "request {i}: greedy tokens");
        let (la, lb) = (a.logprobs.as_ref().unwrap(), b.logprobs.as_ref().unwrap());
        assert_eq!(la.len(), 10);
        for (x, y) in la.iter().zip(lb) {
            close(x.logprob, y.logprob, &format!("request {i}"));
            let (kx, ky) = (x.kl_to_reference.unwrap(), y.kl_to_reference.unwrap());
            assert!((kx - ky).abs() <= 1e-5, "request {i}: KL {kx} vs {ky}");
        }
    }
    // Mixtures that differ must give different tokens somewhere (the adapters do something).
    assert!(one.iter().any(|g| g.tokens != one[0].tokens));
}

fn seq(prompt: &[u32], l: &[f64], n: usize) -> SequenceRequest {
    SequenceRequest {
        decoding: Decoding {
            greedy: true,
            max_new_tokens: n,
            stop_on_eos: false,
            logprobs: Some(2),
            kl_to_reference: n.is_multiple_of(2),
            ..Default::default()
        },
        ..SequenceRequest::new(prompt.to_vec(), mixture(l))
    }
}

/// Drives a session: sequences join a running batch, one is cancelled, others end at
/// different steps; returns every step's events.
fn session_script(r: &Realigner) -> Vec<Vec<StepEvent>> {
    let mut s = Session::new(r);
    let mut steps = Vec::new();
    let a = s
        .add(seq(&[72, 101, 108, 108, 111], &[0.5, 0.5, 0.0], 12))
        .unwrap();
    steps.push(s.step().unwrap());
    steps.push(s.step().unwrap());
    s.add_batch(vec![
        seq(&[3, 9, 27], &[0.0, 1.0, 0.0], 5),
        seq(&[3, 9, 27], &[1.0, 0.0, 0.5], 8),
        seq(&[5, 6, 7, 8, 9, 10, 11], &[0.0, 0.0, 0.0], 6),
    ])
    .unwrap();
    steps.push(s.step().unwrap());
    steps.push(s.step().unwrap());
    assert!(s.cancel(a));
    assert!(!s.cancel(SeqId(99)));
    steps.push(s.step().unwrap());
    s.add(seq(&[72, 101], &[2.0, -1.0, 0.0], 4)).unwrap();
    while !s.is_empty() {
        steps.push(s.step().unwrap());
    }
    let finished = s.take_finished();
    assert_eq!(finished.len(), 5);
    steps
}

#[test]
fn session_joining_and_cancelling_matches_separate_passes() {
    let one = session_script(&realigner(true, true));
    let two = session_script(&realigner(true, false));
    assert_eq!(one.len(), two.len());
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        same_events(a, b, &format!("step {i}"));
    }
}

#[test]
fn scoring_matches_separate_passes() {
    let (one, two) = (realigner(true, true), realigner(true, false));
    let prompt = [72, 101, 108, 108, 111];
    for l in [[0.0, 0.0, 0.0], [0.5, 0.75, 0.0], [1.0, -0.5, 0.25]] {
        let m = mixture(&l);
        let (a, b) = (
            one.next_token_logprobs(&prompt, &m).unwrap(),
            two.next_token_logprobs(&prompt, &m).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            close(*x, *y, &format!("next token {l:?}"));
        }
        let (a, b) = (
            one.score(&prompt, &[32, 119, 111], &m).unwrap(),
            two.score(&prompt, &[32, 119, 111], &m).unwrap(),
        );
        for (x, y) in a.token_logprobs.iter().zip(&b.token_logprobs) {
            assert!((x - y).abs() <= 1e-5, "score {l:?}: {x} vs {y}");
        }
        for (x, y) in a.kl_to_reference.iter().zip(&b.kl_to_reference) {
            assert!((x - y).abs() <= 1e-5, "KL {l:?}: {x} vs {y}");
        }
    }
}
