//! Logits of every family against Hugging Face transformers (fixtures written by
//! `scripts/golden/make_fixtures.sh`), uncached and with a KV cache.

use std::path::{Path, PathBuf};

use dera_checkpoint::Checkpoint;
use dera_models::{CausalLm, Device, LoadedModel, load};

const TOL: f32 = 1e-4;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

struct Case {
    ids: Vec<u32>,
    text: String,
    /// `[T, V]` row-major.
    logits: Vec<f32>,
}

fn cases(name: &str) -> Vec<Case> {
    let dir = golden().join("expected").join(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let file = dera_checkpoint::SafetensorsFile::open(&dir.join("logits.safetensors")).unwrap();
    expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Case {
            ids: p["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            text: p["text"].as_str().unwrap().to_string(),
            logits: file
                .read_f32(p["logits_tensor"].as_str().unwrap())
                .unwrap()
                .0,
        })
        .collect()
}

fn rows(t: dera_models::Tensor<3>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The CPU backends compiled into this build.
fn devices() -> Vec<Device> {
    let mut d = vec![Device::flex()];
    if let Ok(nd) = dera_models::DeviceKind::Ndarray.device() {
        d.push(nd);
    }
    d
}

fn check(name: &str) {
    for device in devices() {
        check_on(name, &device);
    }
}

fn check_on(name: &str, device: &Device) {
    let device = device.clone();
    let m: LoadedModel = load(&golden().join("models").join(name), &device).unwrap();
    let v = m.model.vocab_size();
    for case in cases(name) {
        let t = case.ids.len();
        assert_eq!(
            m.tokenizer().unwrap().encode(&case.text).unwrap(),
            case.ids,
            "{name}: tokenization of {:?}",
            case.text
        );
        // Uncached: every position at once.
        let mut cache = m.model.new_cache();
        let all = rows(m.model.forward(&case.ids, 1, &mut cache, true).unwrap());
        let d = max_diff(&all, &case.logits);
        assert!(
            d <= TOL,
            "{name}: uncached max |diff| {d} over {t} positions"
        );
        // Cached: a prefill of a few tokens, then one token at a time.
        let mut cache = m.model.new_cache();
        let split = 3.min(t);
        let first = rows(
            m.model
                .forward(&case.ids[..split], 1, &mut cache, false)
                .unwrap(),
        );
        let d = max_diff(&first, &case.logits[(split - 1) * v..split * v]);
        assert!(d <= TOL, "{name}: prefill max |diff| {d}");
        for pos in split..t {
            let step = rows(
                m.model
                    .forward(&case.ids[pos..=pos], 1, &mut cache, false)
                    .unwrap(),
            );
            let d = max_diff(&step, &case.logits[pos * v..(pos + 1) * v]);
            assert!(d <= TOL, "{name}: cached step {pos} max |diff| {d}");
        }
        assert_eq!(cache.len(), t);
    }
}

#[test]
fn llama_current_config_untied_gqa() {
    check("llama");
}

#[test]
fn llama3_legacy_config_scaled_rope_tied_explicit_head_dim() {
    check("llama3_legacy");
}

#[test]
fn qwen2_biases_tied() {
    check("qwen2");
}

#[test]
fn gpt2() {
    check("gpt2");
}

#[test]
fn llama_sharded_index() {
    assert!(
        Checkpoint::open(&golden().join("models/llama_sharded"))
            .unwrap()
            .is_sharded()
    );
    check("llama_sharded");
}

#[test]
fn llama_bf16_weights_computed_in_f32() {
    check("llama_bf16");
}

#[test]
fn eos_ids_come_from_generation_config() {
    let m = load(&golden().join("models/llama"), &Device::flex()).unwrap();
    assert_eq!(m.eos_token_ids, [0, 2]);
}

/// Left-padded rows in one batch give the same logits as each row alone.
#[test]
fn left_padded_batch_matches_single_rows() {
    let device = Device::flex();
    for name in ["llama", "gpt2"] {
        let m = load(&golden().join("models").join(name), &device).unwrap();
        let v = m.model.vocab_size();
        let cs = cases(name);
        let (a, b) = (&cs[0].ids, &cs[1].ids);
        let len = a.len().max(b.len());
        let pads = vec![len - a.len(), len - b.len()];
        let mut tokens = Vec::new();
        for (ids, &pad) in [a, b].into_iter().zip(&pads) {
            tokens.extend(std::iter::repeat_n(ids[0], pad));
            tokens.extend_from_slice(ids);
        }
        let mut cache = dera_models::KvCache::with_padding(m.model.config().num_layers, pads);
        let last = rows(m.model.forward(&tokens, 2, &mut cache, false).unwrap());
        for (row, case) in cs.iter().take(2).enumerate() {
            let t = case.ids.len();
            let d = max_diff(
                &last[row * v..(row + 1) * v],
                &case.logits[(t - 1) * v..t * v],
            );
            assert!(d <= TOL, "{name}: padded row {row} max |diff| {d}");
        }
        // One more cached step per row (same token), still matching single-row decoding.
        let step = rows(m.model.forward(&[5, 5], 2, &mut cache, false).unwrap());
        for (row, case) in cs.iter().take(2).enumerate() {
            let mut c = m.model.new_cache();
            let mut ids = case.ids.clone();
            ids.push(5);
            let single = rows(m.model.forward(&ids, 1, &mut c, false).unwrap());
            let d = max_diff(&step[row * v..(row + 1) * v], &single);
            assert!(d <= TOL, "{name}: padded decode row {row} max |diff| {d}");
        }
    }
}

#[test]
fn gpt2_variant_erf_gelu_layer_scaled_attention_unprefixed_f16() {
    check("gpt2_variant");
}

#[test]
fn mistral_f16() {
    check("mistral");
}
