//! A few SFT and DPO steps on a toy model reduce their losses.

use dera_lab::dpo::{DpoConfig, PreferencePair, dpo};
use dera_lab::export::TinyConfig;
use dera_lab::params::{AdamW, Params};
use dera_lab::train::{Batch, nll, train_device};
use dera_models::{Device, Model};

fn toy() -> TinyConfig {
    TinyConfig {
        vocab_size: 24,
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 1,
        intermediate_size: 32,
        max_position_embeddings: 64,
    }
}

#[test]
fn sft_steps_reduce_the_loss() {
    let cfg = toy().model_config().unwrap();
    let mut params = Params::init(&cfg, 1, &Device::flex());
    let seqs: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..12).map(|i| ((i * 3 + r) % 24) as u32).collect())
        .collect();
    let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let batch = Batch::new(&rows, &[1; 4]);
    let opt = AdamW {
        lr: 1e-2,
        ..AdamW::default()
    };
    let mut losses = Vec::new();
    for _ in 0..30 {
        let model = Model::new(&cfg, &params).unwrap();
        let loss = nll(&model, &batch).unwrap();
        losses.push(loss.clone().inner().into_scalar::<f32>());
        let grads = loss.backward();
        params.step(&grads, &opt);
    }
    assert!(train_device().is_autodiff());
    assert!(
        losses[29] < 0.6 * losses[0],
        "loss did not fall: {:?}",
        losses
    );
}

#[test]
fn dpo_steps_prefer_the_chosen_response() {
    let cfg = toy().model_config().unwrap();
    let params0 = Params::init(&cfg, 2, &Device::flex());
    let host = params0.to_host().unwrap();
    let pairs: Vec<PreferencePair> = (0..4)
        .map(|i| PreferencePair {
            prompt: String::new(),
            chosen: String::new(),
            rejected: String::new(),
            prompt_ids: vec![0, 1 + i],
            chosen_ids: vec![5, 6, 7, 0],
            rejected_ids: vec![9, 0],
        })
        .collect();
    // The reference log-probabilities are those of the initial model.
    let dir = tempfile::tempdir().unwrap();
    let tc = toy();
    dera_lab::export::write_safetensors_f16(&dir.path().join("model.safetensors"), &host).unwrap();
    std::fs::write(dir.path().join("config.json"), tc.to_json().to_string()).unwrap();
    let reference = dera_lab::dpo::frozen_logprobs(&cfg, dir.path(), &pairs, 4).unwrap();
    let mut params = Params::from_checkpoint(dir.path(), &cfg, &Device::flex()).unwrap();
    let mut first = None;
    let mut last = 0.0;
    let dc = DpoConfig {
        beta: 0.5,
        batch_pairs: 4,
        epochs: 15,
        lr: 1e-2,
        seed: 0,
        labels: None,
    };
    dpo(&cfg, &mut params, &pairs, &reference, &dc, |s| {
        first.get_or_insert(s.loss);
        last = s.loss;
    })
    .unwrap();
    let first = first.unwrap();
    assert!(
        (first - std::f64::consts::LN_2).abs() < 1e-2,
        "initial DPO loss {first}"
    );
    assert!(last < 0.5 * first, "DPO loss {first} -> {last}");
}

#[test]
fn soft_labelled_dpo_converges_to_the_bradley_terry_margin() {
    let cfg = toy().model_config().unwrap();
    let host = Params::init(&cfg, 3, &Device::flex()).to_host().unwrap();
    let pairs: Vec<PreferencePair> = (0..4)
        .map(|i| PreferencePair {
            prompt: String::new(),
            chosen: "a b".into(),
            rejected: "a".into(),
            prompt_ids: vec![0, 1 + i],
            chosen_ids: vec![5, 6, 7, 0],
            rejected_ids: vec![9, 0],
        })
        .collect();
    let reward = dera_lab::Reward::Length { min: 2, max: 3 };
    let labels = dera_lab::dpo::bradley_terry_labels(&pairs, &reward);
    let p = 1.0 / (1.0 + (-1f64).exp());
    assert!(labels.iter().all(|&l| (l - p).abs() < 1e-12), "{labels:?}");

    let dir = tempfile::tempdir().unwrap();
    dera_lab::export::write_safetensors_f16(&dir.path().join("model.safetensors"), &host).unwrap();
    std::fs::write(dir.path().join("config.json"), toy().to_json().to_string()).unwrap();
    let reference = dera_lab::dpo::frozen_logprobs(&cfg, dir.path(), &pairs, 4).unwrap();
    let mut params = Params::from_checkpoint(dir.path(), &cfg, &Device::flex()).unwrap();
    let mut last = f64::NAN;
    let mut dc = DpoConfig {
        beta: 0.5,
        batch_pairs: 4,
        epochs: 80,
        lr: 1e-2,
        seed: 0,
        labels: Some(labels[..3].to_vec()),
    };
    // One label per pair.
    assert!(dpo(&cfg, &mut params, &pairs, &reference, &dc, |_| {}).is_err());
    dc.labels = Some(labels);
    dpo(&cfg, &mut params, &pairs, &reference, &dc, |s| {
        last = s.loss
    })
    .unwrap();
    // Cross-entropy against soft labels is bounded below by their entropy, reached exactly at
    // the margin beta * h = r(chosen) - r(rejected) = 1: the loss must settle there, not at 0.
    let entropy = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
    assert!(
        (last - entropy).abs() < 0.01,
        "soft DPO loss {last}, entropy {entropy}"
    );
}
