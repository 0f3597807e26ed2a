//! A model whose coefficient in a row is exactly zero skips that row (a sweep's lambda = 0 row
//! runs only the reference, its lambda = 1 row only the aligned model). Skipping must change
//! nothing: these tests compare against runs where nothing can be skipped.

use std::path::PathBuf;

use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};
use dera_models::Device;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models")
}

fn pair() -> Realigner {
    Realigner::load(
        &assets().join("reference"),
        &[assets().join("aligned-length")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap()
}

fn alone(name: &str) -> Realigner {
    Realigner::load(
        &assets().join(name),
        &[],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap()
}

/// lambda = 1 on the pair is the aligned model alone and lambda = 0 the reference alone, to the
/// bit, for next-token log-probabilities.
#[test]
fn endpoint_logprobs_equal_the_single_models_bit_for_bit() {
    let pair = pair();
    let prompt = pair.tokenizer().unwrap().encode("I never did").unwrap();
    for (lambda, name) in [(0.0, "reference"), (1.0, "aligned-length")] {
        let got = pair
            .next_token_logprobs(&prompt, &Mixture::single(lambda).unwrap())
            .unwrap();
        let want = alone(name)
            .next_token_logprobs(&prompt, &Mixture::reference_only())
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "lambda {lambda} vs {name} alone");
    }
}

/// A batch whose rows stop at different steps (each model's share of the batch shrinks
/// differently) decodes every row exactly as it decodes alone, where no row is shared.
#[test]
fn batch_with_endpoint_rows_and_early_stops_equals_rows_alone() {
    let engine = pair();
    let tok = engine.tokenizer().unwrap();
    let prompts = [
        "I never did",
        "If you are",
        "The master programmer",
        "manual, n.: A",
    ];
    let lambdas = [0.0, 1.0, 0.5, 2.0, 1.0, 0.0, -0.5, 1.0];
    let reqs: Vec<Request> = lambdas
        .iter()
        .enumerate()
        .map(|(i, &l)| Request {
            prompt_ids: tok.encode(prompts[i % prompts.len()]).unwrap(),
            mixture: Mixture::single(l).unwrap(),
            seed: Some(100 + i as u64),
        })
        .collect();
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: 120,
        greedy: true,
        stop_on_eos: true,
        ..Default::default()
    });
    let batch = engine.generate(&reqs, &opts, |_| {}).unwrap();
    let mut lengths: Vec<usize> = batch.iter().map(|g| g.tokens.len()).collect();
    for (req, got) in reqs.iter().zip(&batch) {
        let one = engine
            .generate(std::slice::from_ref(req), &opts, |_| {})
            .unwrap();
        assert_eq!(
            one[0].tokens,
            got.tokens,
            "lambda {:?}",
            req.mixture.lambdas()
        );
    }
    lengths.sort_unstable();
    lengths.dedup();
    assert!(
        lengths.len() >= 3,
        "rows should stop at different steps for this test to bite: {lengths:?}"
    );
}
