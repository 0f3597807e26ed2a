//! GGUF files against transformers loading the same files (fixtures written by
//! `scripts/golden/generate_gguf.py`): tokenization, next-token log-probs to 1e-3 and greedy
//! tokens, for tiny random Llama / Qwen2 models in F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
//! Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS, with their tokenizers and chat templates in the metadata.

use std::path::{Path, PathBuf};

use dera_models::{CausalLm, Device, LoadOptions, LoadedModel, WeightDtype, load_with};
use serde_json::Value;

const TOL: f32 = 1e-3;
const MODELS: [&str; 9] = [
    "llama_q8_0",
    "llama_q4_0_tied",
    "qwen2_mixed",
    "llama_spm",
    "llama_kquants",
    "llama_q5",
    "llama_q3_k",
    "llama_q2_k",
    "llama_iq4",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&x| x - lse).collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn next_logits(m: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut cache = m.model.new_cache();
    m.model
        .forward(ids, 1, &mut cache, false)
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn greedy(m: &LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.model.new_cache();
    let mut out = Vec::new();
    let mut logits = m
        .model
        .forward(prompt, 1, &mut cache, false)
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = m
            .model
            .forward(&[t], 1, &mut cache, false)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
    }
    out
}

fn devices() -> Vec<Device> {
    let mut d = vec![Device::flex()];
    if let Ok(nd) = dera_models::DeviceKind::Ndarray.device() {
        d.push(nd);
    }
    d
}

fn check(name: &str, device: &Device, options: &LoadOptions) {
    let exp = &expected()["models"][name];
    let path = fixtures().join(exp["file"].as_str().unwrap());
    let m = load_with(&path, device, options).unwrap();
    let tok = m.tokenizer().unwrap();
    for case in exp["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&case["ids"]),
            "{name}: tokenization of {text:?}"
        );
    }
    for case in exp["decode"].as_array().unwrap() {
        assert_eq!(
            tok.decode(&ids(&case["ids"])).unwrap(),
            case["text"].as_str().unwrap(),
            "{name}: decode"
        );
    }
    assert_eq!(
        m.eos_token_ids,
        vec![exp["eos_token_id"].as_u64().unwrap() as u32],
        "{name}: eos ids"
    );
    for p in exp["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let want: Vec<f32> = p["next_token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got = log_softmax(&next_logits(&m, &prompt));
        assert_eq!(got.len(), want.len(), "{name}: vocabulary");
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= TOL,
            "{name} on {device:?}: max |log-prob diff| {diff}"
        );
        let g = ids(&p["greedy"]);
        assert_eq!(
            greedy(&m, &prompt, g.len()),
            g,
            "{name} on {device:?}: greedy tokens"
        );
    }
}

#[test]
fn gguf_models_match_transformers() {
    for name in MODELS {
        for device in devices() {
            check(name, &device, &LoadOptions::default());
        }
    }
}

#[test]
fn gguf_models_match_transformers_forced_f32() {
    let f32 = LoadOptions {
        dtype: WeightDtype::F32,
        quantize: None,
        panels: false,
    };
    for name in MODELS {
        check(name, &Device::flex(), &f32);
    }
}

#[test]
fn gguf_config_comes_from_metadata() {
    let cfg = dera_models::ModelConfig::from_dir(&fixtures().join("qwen2_mixed.gguf")).unwrap();
    assert_eq!(cfg.architecture, dera_models::Architecture::Qwen2);
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.num_kv_heads
        ),
        (64, 2, 4, 2)
    );
    assert_eq!(
        (cfg.intermediate_size, cfg.vocab_size, cfg.head_dim),
        (128, 400, 16)
    );
    assert!(cfg.attention_bias && !cfg.tie_word_embeddings);
    assert_eq!(cfg.rope_theta, 1_000_000.0);
    let tied =
        dera_models::ModelConfig::from_dir(&fixtures().join("llama_q4_0_tied.gguf")).unwrap();
    assert!(tied.tie_word_embeddings);
    assert_eq!(tied.num_kv_heads, 4);
}

#[test]
fn block_formats_stay_in_their_blocks() {
    use dera_models::{HostWeights, WeightFormat, Weights};
    // `--dtype f32`: every matrix dequantized once.
    let dequantized = LoadOptions {
        dtype: WeightDtype::F32,
        quantize: None,
        panels: false,
    };
    for (file, tensor, rows, cols, format) in [
        (
            "llama_q8_0",
            "model.layers.0.mlp.up_proj.weight",
            128,
            64,
            WeightFormat::Q8_0,
        ),
        (
            "llama_q4_0_tied",
            "model.layers.1.mlp.gate_proj.weight",
            96,
            64,
            WeightFormat::Q4_0,
        ),
    ] {
        let g = dera_models::GgufModel::open(&fixtures().join(format!("{file}.gguf"))).unwrap();
        let w = HostWeights::new(&g, Device::flex());
        let m = w.host_matrix(tensor, rows, cols, false).unwrap().unwrap();
        assert_eq!(m.format(), format, "{file} {tensor}");
        assert!(
            m.bytes().is_shared(),
            "{file} {tensor}: read in place from the memory map"
        );
        // llama's q rows are permuted in the file: reordered once, still as blocks.
        let q = w
            .host_matrix("model.layers.0.self_attn.q_proj.weight", 64, 64, false)
            .unwrap()
            .unwrap();
        assert_eq!(q.format(), format);
        // --dtype f32 dequantizes.
        let f32 = HostWeights::with_options(&g, Device::flex(), dequantized);
        let m = f32.host_matrix(tensor, rows, cols, false).unwrap().unwrap();
        assert_eq!(m.format(), WeightFormat::F32);
    }
    // Q4_1 too (qwen2: no permuted rows); `--dtype f32` dequantizes it.
    let g = dera_models::GgufModel::open(&fixtures().join("qwen2_mixed.gguf")).unwrap();
    let w = HostWeights::new(&g, Device::flex());
    let up = "model.layers.0.mlp.up_proj.weight";
    let m = w.host_matrix(up, 128, 64, false).unwrap().unwrap();
    assert_eq!(m.format(), WeightFormat::Q4_1);
    assert!(m.bytes().is_shared(), "Q4_1 read in place");
    let f32 = HostWeights::with_options(&g, Device::flex(), dequantized);
    let d = f32.host_matrix(up, 128, 64, false).unwrap().unwrap();
    assert_eq!(d.format(), WeightFormat::F32);
    assert_eq!(
        d.to_f32(),
        m.to_f32(),
        "the blocks hold the dequantized values"
    );
    // Q4_K, Q5_K and Q6_K super-blocks too (llama's permuted q rows reordered as whole rows).
    // The kernels' values are dera-gguf's dequantization, bit for bit.
    // (tensor, shape, format, read in place from the memory map; q is reordered once)
    in_place(
        "llama_kquants",
        &dequantized,
        &[
            (
                "model.layers.0.mlp.gate_proj.weight",
                256,
                256,
                WeightFormat::Q4K,
                true,
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                256,
                256,
                WeightFormat::Q4K,
                false,
            ),
            (
                "model.embed_tokens.weight",
                400,
                256,
                WeightFormat::Q4K,
                true,
            ),
            (
                "model.layers.0.self_attn.v_proj.weight",
                128,
                256,
                WeightFormat::Q6K,
                true,
            ),
            ("lm_head.weight", 400, 256, WeightFormat::Q6K, true),
            (
                "model.layers.0.mlp.down_proj.weight",
                256,
                256,
                WeightFormat::Q5K,
                true,
            ),
        ],
    );
    // Q5_0 and Q5_1 blocks (what Q4_K_M / Q5_K_M files hold where rows are not whole
    // super-blocks): in place, the values dera-gguf's dequantization gives.
    // Q3_K super-blocks (Q3_K_M files): in place, dera-gguf's dequantized values.
    in_place(
        "llama_q3_k",
        &dequantized,
        &[
            (
                "model.layers.0.mlp.up_proj.weight",
                256,
                256,
                WeightFormat::Q3K,
                true,
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                256,
                256,
                WeightFormat::Q3K,
                false,
            ),
            (
                "model.embed_tokens.weight",
                400,
                256,
                WeightFormat::Q3K,
                true,
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                256,
                256,
                WeightFormat::Q4K,
                true,
            ),
        ],
    );
    // Q2_K super-blocks (Q2_K files), the tied Q4_K embedding as the head.
    in_place(
        "llama_q2_k",
        &dequantized,
        &[
            (
                "model.layers.0.mlp.gate_proj.weight",
                256,
                256,
                WeightFormat::Q2K,
                true,
            ),
            (
                "model.layers.0.self_attn.k_proj.weight",
                128,
                256,
                WeightFormat::Q2K,
                false,
            ),
            (
                "model.layers.0.self_attn.v_proj.weight",
                128,
                256,
                WeightFormat::Q3K,
                true,
            ),
        ],
    );
    // IQ4_XS super-blocks and IQ4_NL blocks.
    in_place(
        "llama_iq4",
        &dequantized,
        &[
            (
                "model.layers.0.mlp.gate_proj.weight",
                256,
                256,
                WeightFormat::Iq4Xs,
                true,
            ),
            (
                "model.embed_tokens.weight",
                400,
                256,
                WeightFormat::Iq4Xs,
                true,
            ),
            (
                "model.layers.0.self_attn.v_proj.weight",
                128,
                256,
                WeightFormat::Iq4Nl,
                true,
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                256,
                256,
                WeightFormat::Iq4Nl,
                true,
            ),
        ],
    );
    in_place(
        "llama_q5",
        &dequantized,
        &[
            (
                "model.layers.0.mlp.gate_proj.weight",
                128,
                64,
                WeightFormat::Q5_0,
                true,
            ),
            (
                "model.layers.1.self_attn.q_proj.weight",
                64,
                64,
                WeightFormat::Q5_0,
                false,
            ),
            (
                "model.layers.0.self_attn.v_proj.weight",
                32,
                64,
                WeightFormat::Q5_1,
                true,
            ),
            (
                "model.layers.1.mlp.down_proj.weight",
                64,
                128,
                WeightFormat::Q5_1,
                true,
            ),
            (
                "model.embed_tokens.weight",
                400,
                64,
                WeightFormat::Q5_1,
                true,
            ),
            ("lm_head.weight", 400, 64, WeightFormat::Q5_0, true),
        ],
    );
}

/// Each `(tensor, rows, cols, format, mapped)` of fixture `file` is held in `format`, in place
/// from the memory map when `mapped`, and holds the values `--dtype f32` (`dequantized`) reads.
fn in_place(
    file: &str,
    dequantized: &LoadOptions,
    cases: &[(&str, usize, usize, dera_models::WeightFormat, bool)],
) {
    use dera_models::{HostWeights, Weights};
    let g = dera_models::GgufModel::open(&fixtures().join(format!("{file}.gguf"))).unwrap();
    let (w, f32) = (
        HostWeights::new(&g, Device::flex()),
        HostWeights::with_options(&g, Device::flex(), *dequantized),
    );
    for &(tensor, rows, cols, format, mapped) in cases {
        let m = w.host_matrix(tensor, rows, cols, false).unwrap().unwrap();
        assert_eq!(m.format(), format, "{file} {tensor}");
        if mapped {
            assert!(m.bytes().is_shared(), "{file} {tensor}");
        }
        let d = f32.host_matrix(tensor, rows, cols, false).unwrap().unwrap();
        assert_eq!(d.to_f32(), m.to_f32(), "{file} {tensor}");
    }
}
