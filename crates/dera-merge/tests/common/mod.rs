//! Tiny checkpoints written with the safetensors crate.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// `values` encoded as `dtype` (round to nearest even).
pub fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|&v| f64::from(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        _ => panic!("unsupported {dtype:?}"),
    }
}

/// A deterministic pseudo-random vector in [-2, 2).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

pub fn tensor(name: &str, dtype: Dtype, shape: &[usize], values: &[f32]) -> Tensor {
    (
        name.to_string(),
        dtype,
        shape.to_vec(),
        encode(dtype, values),
    )
}

pub fn llama_config(vocab: usize) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "vocab_size": vocab,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
    })
}

/// The tensors of a tiny tied Llama: embeddings `[vocab, 8]`, one layer, final norm.
pub fn llama_tensors(seed: u64, dtype: Dtype, vocab: usize) -> Vec<Tensor> {
    let specs: [(&str, Vec<usize>); 5] = [
        ("model.embed_tokens.weight", vec![vocab, 8]),
        ("model.layers.0.self_attn.q_proj.weight", vec![8, 8]),
        ("model.layers.0.mlp.up_proj.weight", vec![16, 8]),
        ("model.layers.0.input_layernorm.weight", vec![8]),
        ("model.norm.weight", vec![8]),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            tensor(name, dtype, shape, &values(seed * 100 + i as u64, n))
        })
        .collect()
}

/// Writes `model.safetensors` and `config.json` into `dir`.
pub fn write_checkpoint(dir: &Path, tensors: &[Tensor], config: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    write_file(&dir.join("model.safetensors"), tensors);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Writes `tensors` split over `shards` files with an index, as transformers does.
pub fn write_sharded(dir: &Path, tensors: &[Tensor], config: &Value, shards: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, group) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        write_file(&dir.join(&file), group);
        for t in group {
            weight_map.insert(t.0.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

pub fn write_file(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

/// A reference and one aligned tiny Llama of `dtype` in a fresh temp dir.
pub struct Pair {
    pub tmp: tempfile::TempDir,
    pub reference: PathBuf,
    pub aligned: PathBuf,
    pub out: PathBuf,
}

pub fn pair(dtype: Dtype) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("ref");
    let aligned = tmp.path().join("aligned");
    write_checkpoint(&reference, &llama_tensors(1, dtype, 32), &llama_config(32));
    write_checkpoint(&aligned, &llama_tensors(2, dtype, 32), &llama_config(32));
    let out = tmp.path().join("out");
    Pair {
        tmp,
        reference,
        aligned,
        out,
    }
}

impl Pair {
    pub fn inputs(&self, lambda: f64) -> dera_merge::MergeInputs {
        dera_merge::MergeInputs {
            reference: self.reference.clone(),
            aligned: vec![self.aligned.clone()],
            lambdas: vec![lambda],
        }
    }
}

/// Asserts that `out` does not exist and that no hidden temporary sibling is left.
pub fn assert_no_output(out: &Path) {
    assert!(!out.exists(), "{} exists", out.display());
    assert_no_leftovers(out);
}

/// Asserts that no `.NAME.dera-*` sibling of `out` is left.
pub fn assert_no_leftovers(out: &Path) {
    let name = out.file_name().unwrap().to_string_lossy();
    let prefix = format!(".{name}.dera-");
    let parent = out.parent().unwrap();
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !n.starts_with(&prefix),
                "leftover {n} in {}",
                parent.display()
            );
        }
    }
}
