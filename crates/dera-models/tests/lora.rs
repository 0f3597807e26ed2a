//! LoRA adapters on models: "reference + adapter" against transformers + peft
//! (`tests/fixtures/lora`, written by `scripts/golden/generate_lora.py`), and the shared-base
//! batch (rows of different adapters in one pass) against separate passes.

use std::path::{Path, PathBuf};

use dera_models::{CausalLm, Device, LoadedModel, LoraWeights, Model, load, load_adapter};
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

fn devices() -> Vec<Device> {
    let mut d = vec![Device::flex()];
    if let Ok(nd) = dera_models::DeviceKind::Ndarray.device() {
        d.push(nd);
    }
    d
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|&x| x as f64 - z).collect()
}

fn last_logits(model: &Model, prompt: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let out = model.forward(prompt, 1, &mut cache, false).unwrap();
    out.try_into_vec_as::<f32>().unwrap()
}

/// At lambda = 1 the mixture is the aligned model: base + adapter must give peft's log-probs.
#[test]
fn reference_plus_adapter_matches_peft() {
    let fx = expected();
    let prompt = ids(&fx["prompt_ids"]);
    let mut checked = 0;
    for device in devices() {
        for group in fx["groups"].as_array().unwrap() {
            let aligned = group["aligned"].as_array().unwrap();
            if aligned.len() != 1 {
                continue;
            }
            let reference =
                load(&fixtures().join(group["ref"].as_str().unwrap()), &device).unwrap();
            let adapted =
                load_adapter(&reference, &fixtures().join(aligned[0].as_str().unwrap())).unwrap();
            assert!(adapted.model.adapter().is_some());
            for case in group["cases"].as_array().unwrap() {
                if case["lambdas"][0].as_f64() != Some(1.0) {
                    continue;
                }
                let got = log_softmax(&last_logits(&adapted.model, &prompt));
                let want: Vec<f64> = case["next_token_logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(diff <= 1e-4, "{} on {device:?}: {diff}", group["name"]);
                // The adapter changes the model (the fixture would not test anything otherwise).
                let base = log_softmax(&last_logits(&reference.model, &prompt));
                let moved = base
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(moved > 1e-2, "{}: adapter has no effect", group["name"]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 4);
}

fn llama_and_adapters(device: &Device) -> (LoadedModel, LoraWeights, LoraWeights) {
    let reference = load(&fixtures().join("golden/models/llama"), device).unwrap();
    let a = LoraWeights::load(
        &reference.model,
        &fixtures().join("lora/adapters/llama_attn_r4"),
    )
    .unwrap();
    let b = LoraWeights::load(
        &reference.model,
        &fixtures().join("lora/adapters/llama_all_r8_rslora"),
    )
    .unwrap();
    (reference, a, b)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Rows of the reference and of two adapters in one batch (base products once for all rows)
/// give what each model gives alone, through a prefill and cached decode steps.
#[test]
fn shared_base_batch_equals_separate_models() {
    for device in devices() {
        let (reference, a, b) = llama_and_adapters(&device);
        let base = &reference.model;
        let models = [base.clone(), base.with_adapter(&a), base.with_adapter(&b)];
        let rows: [Option<&LoraWeights>; 4] = [None, Some(&a), Some(&b), Some(&a)];
        let which = [0usize, 1, 2, 1];
        let prompt: Vec<u32> = vec![72, 101, 108, 108, 111, 32, 119];
        let steps: [u32; 3] = [17, 230, 5];
        let mut batch_cache = base.new_cache();
        let tokens: Vec<u32> = (0..4).flat_map(|_| prompt.clone()).collect();
        let mut got = vec![
            base.forward_adapters(&tokens, 4, &mut batch_cache, &rows, true)
                .unwrap()
                .try_into_vec_as::<f32>()
                .unwrap(),
        ];
        for s in steps {
            got.push(
                base.forward_adapters(&[s; 4], 4, &mut batch_cache, &rows, false)
                    .unwrap()
                    .try_into_vec_as::<f32>()
                    .unwrap(),
            );
        }
        let v = base.vocab_size();
        for (row, &m) in which.iter().enumerate() {
            let model = &models[m];
            let mut cache = model.new_cache();
            let first = model
                .forward(&prompt, 1, &mut cache, true)
                .unwrap()
                .try_into_vec_as::<f32>()
                .unwrap();
            let t = prompt.len();
            let d = max_diff(&got[0][row * t * v..(row + 1) * t * v], &first);
            assert!(d <= 1e-5, "prefill row {row} on {device:?}: {d}");
            for (j, s) in steps.iter().enumerate() {
                let step = model
                    .forward(&[*s], 1, &mut cache, false)
                    .unwrap()
                    .try_into_vec_as::<f32>()
                    .unwrap();
                let d = max_diff(&got[j + 1][row * v..(row + 1) * v], &step);
                assert!(d <= 1e-5, "step {j} row {row} on {device:?}: {d}");
            }
        }
        // The adapters do change their rows.
        assert!(max_diff(&got[3][0..v], &got[3][v..2 * v]) > 1e-3);
    }
}

/// Errors name the module: an adapter for Llama layers on a GPT-2 reference.
#[test]
fn adapters_for_other_models_are_refused_by_module() {
    let gpt2 = load(&fixtures().join("golden/models/gpt2"), &Device::flex()).unwrap();
    let e = load_adapter(&gpt2, &fixtures().join("lora/adapters/llama_attn_r4"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.0.self_attn"), "{e}");
    assert!(e.contains("llama_attn_r4"), "{e}");
    let reference = load(&fixtures().join("golden/models/llama"), &Device::flex()).unwrap();
    let e = load_adapter(
        &reference,
        &fixtures().join("golden/models/llama_aligned_a"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    // load_aligned takes both kinds of folder.
    let full = dera_models::load_aligned(
        &reference,
        &fixtures().join("golden/models/llama_aligned_a"),
        &Device::flex(),
        &Default::default(),
    )
    .unwrap();
    assert!(full.model.adapter().is_none());
    let adapted = dera_models::load_aligned(
        &reference,
        &fixtures().join("lora/adapters/llama_attn_r4"),
        &Device::flex(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        adapted.model.adapter().unwrap().dir(),
        fixtures().join("lora/adapters/llama_attn_r4")
    );
    assert_eq!(adapted.model.adapter().unwrap().num_modules(), 8);
}
