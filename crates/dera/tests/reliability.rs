//! Non-finite logits are errors naming the step, and a request must fit the model's context.

use std::path::Path;

use dera::{Decoding, DeraError, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};
use dera_models::testing::{Shape, prompt, random_weights};
use dera_models::{Device, LoadedModel, ModelConfig, load_from_source};

const SHAPE: Shape = Shape {
    vocab: 64,
    hidden: 16,
    layers: 1,
    heads: 4,
    kv_heads: 2,
    head_dim: 4,
    intermediate: 24,
};

fn model(seed: u64, context: usize, poison: bool) -> LoadedModel {
    let mut cfg = SHAPE.config_json();
    cfg["max_position_embeddings"] = context.into();
    let cfg = ModelConfig::from_json(&cfg, Path::new("config.json")).unwrap();
    let mut w = random_weights(&SHAPE, seed);
    if poison {
        // One NaN in the final norm: every logit of every position becomes NaN.
        let (v, shape) = w.get("model.norm.weight").unwrap();
        let (mut v, shape) = (v.to_vec(), shape.to_vec());
        v[3] = f32::NAN;
        w.insert("model.norm.weight", v, shape);
    }
    load_from_source(Path::new("<test model>"), &cfg, &w, &Device::flex()).unwrap()
}

fn pair(poison_aligned: bool, context: usize) -> Realigner {
    Realigner::from_models(
        vec![model(1, context, false), model(2, context, poison_aligned)],
        VocabPolicy::Strict,
    )
    .unwrap()
}

fn request(len: usize, lambda: f64) -> Request {
    Request {
        prompt_ids: prompt(len, SHAPE.vocab),
        mixture: Mixture::single(lambda).unwrap(),
        seed: None,
    }
}

#[test]
fn nan_weights_are_an_error_naming_the_step_never_a_result() {
    let r = pair(true, 256);
    let mix = Mixture::single(0.5).unwrap();
    let ids = prompt(5, SHAPE.vocab);
    let e = r.next_token_logprobs(&ids, &mix).unwrap_err();
    assert!(matches!(e, DeraError::NonFinite { .. }), "{e}");
    assert!(
        e.to_string().contains("the next token after the prompt"),
        "{e}"
    );
    let opts = GenerateOptions::new(Decoding::greedy(4));
    let e = r.generate(&[request(5, 0.5)], &opts, |_| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("decoding step 0 (new token 1 of request 0)"),
        "{e}"
    );
    let e = r.score(&ids, &[3, 4], &mix).unwrap_err();
    assert!(e.to_string().contains("response token 0"), "{e}");
    // lambda = 0 never runs the poisoned model: the reference alone is fine.
    let ok = r
        .next_token_logprobs(&ids, &Mixture::single(0.0).unwrap())
        .unwrap();
    assert!(ok.iter().all(|v| v.is_finite()));
    let g = r.generate(&[request(5, 0.0)], &opts, |_| {}).unwrap();
    assert_eq!(g[0].tokens.len(), 4);
}

#[test]
fn prompt_and_new_tokens_must_fit_the_context() {
    let r = pair(false, 12);
    assert_eq!(r.context_len().0, 12);
    let opts = |n| {
        GenerateOptions::new(Decoding {
            stop_on_eos: false,
            ..Decoding::greedy(n)
        })
    };
    let e = r
        .generate(&[request(8, 0.5)], &opts(5), |_| {})
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the prompt: 8 prompt tokens + 5 new tokens = 13 exceeds the context of 12 positions \
         (max_position_embeddings of <test model>)"
    );
    let g = r.generate(&[request(8, 0.5)], &opts(4), |_| {}).unwrap();
    assert_eq!(g[0].tokens.len(), 4);
    let e = r
        .next_token_logprobs(&prompt(13, SHAPE.vocab), &Mixture::single(0.5).unwrap())
        .unwrap_err();
    assert!(matches!(e, DeraError::Context { .. }), "{e}");
    let e = r
        .score(
            &prompt(10, SHAPE.vocab),
            &[1, 2, 3],
            &Mixture::single(0.5).unwrap(),
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("prompt + response: 10 prompt tokens + 3 new"),
        "{e}"
    );
}
