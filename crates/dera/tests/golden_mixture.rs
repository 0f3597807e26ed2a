//! The engine against mixtures computed with transformers (`tests/fixtures/golden/expected/dera.json`).

use std::path::{Path, PathBuf};

use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};
use dera_models::Device;
use serde_json::Value;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden().join("expected/dera.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn realigner(group: &Value) -> Realigner {
    let aligned: Vec<PathBuf> = group["aligned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| golden().join(p.as_str().unwrap()))
        .collect();
    Realigner::load(
        &golden().join(group["ref"].as_str().unwrap()),
        &aligned,
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap()
}

fn check_group(name: &str) {
    let fx = fixture();
    let group = &fx[name];
    let r = realigner(group);
    for case in group["cases"].as_array().unwrap() {
        let lambdas = floats(&case["lambdas"]);
        let mixture = Mixture::new(lambdas.clone()).unwrap();
        let prompt = ids(case.get("prompt_ids").unwrap_or(&fx["prompt_ids"]));
        let prompt = if group.get("prompt_ids").is_some() {
            ids(&group["prompt_ids"])
        } else {
            prompt
        };
        let got = r.next_token_logprobs(&prompt, &mixture).unwrap();
        let want = floats(&case["next_token_logprobs"]);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff <= 1e-4,
            "{name} lambdas {lambdas:?}: max |logprob diff| {diff}"
        );

        let opts = GenerateOptions::new(Decoding {
            stop_on_eos: false,
            ..Decoding::greedy(12)
        });
        let out = r
            .generate(
                &[Request {
                    prompt_ids: prompt,
                    mixture,
                    seed: None,
                }],
                &opts,
                |_| {},
            )
            .unwrap();
        assert_eq!(
            out[0].tokens,
            ids(&case["greedy_new_ids"]),
            "{name} lambdas {lambdas:?}: greedy tokens"
        );
    }
}

#[test]
fn llama_pair_logprobs_and_greedy_match_transformers() {
    check_group("llama_pair");
}

#[test]
fn three_model_mixture_matches_transformers() {
    check_group("llama_three");
}

#[test]
fn gpt2_pair_matches_transformers() {
    check_group("gpt2_pair");
}

#[test]
fn score_matches_transformers() {
    let fx = fixture();
    let s = &fx["score"];
    let aligned: Vec<PathBuf> = s["aligned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| golden().join(p.as_str().unwrap()))
        .collect();
    let r = Realigner::load(
        &golden().join(s["ref"].as_str().unwrap()),
        &aligned,
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    let score = r
        .score(
            &ids(&s["prompt_ids"]),
            &ids(&s["response_ids"]),
            &Mixture::new(floats(&s["lambdas"])).unwrap(),
        )
        .unwrap();
    for (a, b) in score
        .token_logprobs
        .iter()
        .zip(floats(&s["token_logprobs"]))
    {
        assert!((a - b).abs() <= 1e-4, "logprob {a} vs {b}");
    }
    for (a, b) in score
        .kl_to_reference
        .iter()
        .zip(floats(&s["token_kl_mix_ref"]))
    {
        assert!((a - b).abs() <= 1e-4, "kl {a} vs {b}");
    }
    assert!((score.total_kl - s["sum_kl"].as_f64().unwrap()).abs() <= 1e-3);
}

/// lambda = 0 reproduces the reference's own greedy generation and lambda = 1 the aligned one's,
/// and a batch with per-sequence lambdas equals the sequences decoded one by one.
#[test]
fn endpoints_and_batched_lambdas_reproduce_single_runs() {
    let fx = fixture();
    let dir = |p: &str| golden().join(p);
    let prompt = ids(&fx["prompt_ids"]);
    let opts = GenerateOptions::new(Decoding {
        stop_on_eos: false,
        ..Decoding::greedy(12)
    });
    let single = |path: &str| {
        let r = Realigner::load(&dir(path), &[], &Device::flex(), VocabPolicy::Strict).unwrap();
        r.generate(
            &[Request {
                prompt_ids: prompt.clone(),
                mixture: Mixture::reference_only(),
                seed: None,
            }],
            &opts,
            |_| {},
        )
        .unwrap()[0]
            .tokens
            .clone()
    };
    let (ref_alone, al_alone) = (single("models/llama"), single("models/llama_aligned_a"));
    let r = Realigner::load(
        &dir("models/llama"),
        &[dir("models/llama_aligned_a")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    let lambdas = [0.0, 1.0, 0.5, 2.0];
    let reqs: Vec<Request> = lambdas
        .iter()
        .map(|&l| Request {
            prompt_ids: prompt.clone(),
            mixture: Mixture::single(l).unwrap(),
            seed: None,
        })
        .collect();
    let batch = r.generate(&reqs, &opts, |_| {}).unwrap();
    assert_eq!(
        batch[0].tokens, ref_alone,
        "lambda 0 must reproduce the reference"
    );
    assert_eq!(
        batch[1].tokens, al_alone,
        "lambda 1 must reproduce the aligned model"
    );
    for (req, got) in reqs.iter().zip(&batch) {
        let alone = r
            .generate(std::slice::from_ref(req), &opts, |_| {})
            .unwrap();
        assert_eq!(
            alone[0].tokens,
            got.tokens,
            "batched vs single for {:?}",
            req.mixture.lambdas()
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_mixture_count_checked() {
    let dir = |p: &str| golden().join(p);
    let r = Realigner::load(
        &dir("models/llama"),
        &[dir("models/llama_aligned_a")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    let prompt = ids(&fixture()["prompt_ids"]);
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: 10,
        seed: 7,
        ..Default::default()
    });
    let req = Request {
        prompt_ids: prompt.clone(),
        mixture: Mixture::single(2.0).unwrap(),
        seed: None,
    };
    let a = r
        .generate(std::slice::from_ref(&req), &opts, |_| {})
        .unwrap();
    let b = r
        .generate(std::slice::from_ref(&req), &opts, |_| {})
        .unwrap();
    assert_eq!(a[0].tokens, b[0].tokens);
    let bad = Request {
        prompt_ids: prompt,
        mixture: Mixture::new(vec![0.5, 0.5]).unwrap(),
        seed: None,
    };
    let err = r.generate(&[bad], &opts, |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("2 lambda value(s) given for 1 aligned model(s)"),
        "{err}"
    );
}
