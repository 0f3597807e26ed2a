//! Harness for GGUF files, shared by the cargo-fuzz target and the corpus replay test
//! (`crates/dera-gguf/tests/fuzz_corpus.rs`). A harness may panic only on a broken property;
//! bad input must come back as an error.

use std::path::Path;

use dera_checkpoint::TensorSource;
use dera_gguf::{GgufFile, GgufModel};

/// Any bytes as `dir/model.gguf`: parse, dequantize every tensor, then build the model view
/// (config, Hugging Face tensors, tokenizer JSON, chat template).
pub fn gguf_file(dir: &Path, data: &[u8]) {
    let path = dir.join("model.gguf");
    std::fs::write(&path, data).expect("write the input");
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let len = std::fs::metadata(&path).expect("the input exists").len() as usize;
    for t in file.tensors() {
        assert!(
            t.range.end <= len,
            "tensor `{}` reaches past the file",
            t.name
        );
        if let Ok((values, shape)) = file.read_f32(&t.name) {
            assert_eq!(values.len(), shape.iter().product::<usize>());
        }
    }
    let Ok(model) = GgufModel::from_file(file) else {
        return;
    };
    let _ = model.tokenizer_json();
    let _ = model.chat_template();
    let _ = model.eos_token_ids();
    let names: Vec<String> = model
        .file()
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    for hf in [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
    ] {
        if model.contains(hf) {
            let _ = model.read_f32(hf);
            if let Some(Ok(b)) = model.stored_blocks(hf) {
                assert!(b.range.end <= (*b.buffer).as_ref().len());
            }
        }
    }
    assert!(!names.is_empty() || model.file().tensors().is_empty());
}
