//! DeRa with LoRA-aligned models against transformers + peft (`tests/fixtures/lora`, written
//! by `scripts/golden/generate_lora.py`): next-token log-probs of the mixture and greedy
//! continuations, through `Realigner::load` (adapter folders as `--aligned`) and through
//! `Realigner::from_models` with models from `dera_models::load_adapter`.

use std::path::{Path, PathBuf};

use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};
use dera_models::Device;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("lora/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
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

fn paths(group: &Value) -> (PathBuf, Vec<PathBuf>) {
    let aligned = group["aligned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| fixtures().join(p.as_str().unwrap()))
        .collect();
    (fixtures().join(group["ref"].as_str().unwrap()), aligned)
}

fn check(r: &Realigner, group: &Value, prompt: &[u32], new_tokens: usize) -> usize {
    let name = group["name"].as_str().unwrap();
    let mut n = 0;
    for case in group["cases"].as_array().unwrap() {
        let lambdas = floats(&case["lambdas"]);
        let mixture = Mixture::new(lambdas.clone()).unwrap();
        let got = r.next_token_logprobs(prompt, &mixture).unwrap();
        let want = floats(&case["next_token_logprobs"]);
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff <= 1e-4,
            "{name} {lambdas:?}: max |logprob diff| {diff}"
        );
        let opts = GenerateOptions::new(Decoding {
            stop_on_eos: false,
            ..Decoding::greedy(new_tokens)
        });
        let request = Request {
            prompt_ids: prompt.to_vec(),
            mixture,
            seed: None,
        };
        let out = r.generate(&[request], &opts, |_| {}).unwrap();
        assert_eq!(
            out[0].tokens,
            ids(&case["greedy_new_ids"]),
            "{name} {lambdas:?}: greedy tokens"
        );
        n += 1;
    }
    n
}

/// Every group (single adapters of several ranks, targets and rslora; two adapters; an adapter
/// with a full checkpoint), adapter folders passed as aligned paths.
#[test]
fn lora_mixtures_match_transformers_and_peft() {
    let fx = expected();
    let prompt = ids(&fx["prompt_ids"]);
    let new_tokens = fx["greedy_new_tokens"].as_u64().unwrap() as usize;
    let mut cases = 0;
    for group in fx["groups"].as_array().unwrap() {
        let (reference, aligned) = paths(group);
        let r =
            Realigner::load(&reference, &aligned, &Device::flex(), VocabPolicy::Strict).unwrap();
        cases += check(&r, group, &prompt, new_tokens);
    }
    assert!(cases >= 18, "{cases} cases");
}

/// The same through `from_models`, with the adapter model built by `load_adapter`, on ndarray
/// (burn tensors for the weights and the low-rank terms).
#[test]
fn from_models_with_load_adapter_on_ndarray() {
    let Ok(device) = dera_models::DeviceKind::Ndarray.device() else {
        return;
    };
    let fx = expected();
    let prompt = ids(&fx["prompt_ids"]);
    let new_tokens = fx["greedy_new_tokens"].as_u64().unwrap() as usize;
    let group = &fx["groups"][1];
    let (reference, aligned) = paths(group);
    let reference = dera_models::load(&reference, &device).unwrap();
    let adapted = dera_models::load_adapter(&reference, &aligned[0]).unwrap();
    let r = Realigner::from_models(vec![reference, adapted], VocabPolicy::Strict).unwrap();
    assert_eq!(check(&r, group, &prompt, new_tokens), 4);
}
