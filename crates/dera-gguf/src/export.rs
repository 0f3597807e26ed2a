//! Writing a GGUF model as a Hugging Face checkpoint folder (dequantized weights), for tools
//! that read checkpoints tensor by tensor (the weight merge).

use std::borrow::Cow;
use std::path::Path;

use dera_checkpoint::{Dtype, TensorSource};
use half::{bf16, f16};
use safetensors::tensor::View;
use serde_json::json;

use crate::{GgufError, GgufModel};

/// Float width of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    /// f32: every dequantized value exactly.
    #[default]
    F32,
    /// bfloat16 (rounded to nearest even), to match a bf16 checkpoint.
    Bf16,
    /// IEEE half (rounded to nearest even), to match an f16 checkpoint.
    F16,
}

/// One tensor, dequantized when the writer asks for its bytes (one tensor in memory at a time).
struct Lazy<'a> {
    model: &'a GgufModel,
    name: String,
    shape: Vec<usize>,
    dtype: ExportDtype,
}

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            ExportDtype::F32 => Dtype::F32,
            ExportDtype::Bf16 => Dtype::BF16,
            ExportDtype::F16 => Dtype::F16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // Every tensor was validated when the file was opened (type, size), so this read
        // cannot fail; an empty buffer would make the writer report a size mismatch.
        let values = self
            .model
            .read_f32(&self.name)
            .map(|(v, _)| v)
            .unwrap_or_default();
        Cow::Owned(match self.dtype {
            ExportDtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ExportDtype::Bf16 => values
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            ExportDtype::F16 => values
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
        })
    }
    fn data_len(&self) -> usize {
        let width = if self.dtype == ExportDtype::F32 { 4 } else { 2 };
        self.shape.iter().product::<usize>() * width
    }
}

/// Writes `model` into the existing, empty folder `dir` as a Hugging Face checkpoint:
/// `model.safetensors` (Hugging Face names, q/k rows in transformers' order), `config.json`,
/// `tokenizer.json`, `tokenizer_config.json` (chat template, BOS/EOS) and
/// `generation_config.json` (EOS ids). The caller owns `dir` (a temporary; see `dera-io`).
pub fn write_checkpoint(
    model: &GgufModel,
    dir: &Path,
    dtype: ExportDtype,
) -> Result<(), GgufError> {
    let err = |what: &str, reason: String| GgufError::Format {
        path: dir.join(what),
        what: "export".into(),
        reason,
    };
    let tensors: Vec<(String, Lazy<'_>)> = model
        .hf_names()
        .map(|(name, shape)| {
            (
                name.to_string(),
                Lazy {
                    model,
                    name: name.to_string(),
                    shape,
                    dtype,
                },
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(tensors, None, &dir.join("model.safetensors"))
        .map_err(|e| err("model.safetensors", e.to_string()))?;
    let mut config = model.config_json().clone();
    config["dtype"] = json!(match dtype {
        ExportDtype::F32 => "float32",
        ExportDtype::Bf16 => "bfloat16",
        ExportDtype::F16 => "float16",
    });
    let write = |name: &str, value: &serde_json::Value| {
        let text = serde_json::to_string_pretty(value).map_err(|e| err(name, e.to_string()))?;
        std::fs::write(dir.join(name), text).map_err(|e| err(name, e.to_string()))
    };
    write("config.json", &config)?;
    if let Ok(tok) = model.tokenizer_json() {
        write("tokenizer.json", &tok)?;
    }
    let mut tok_cfg = json!({
        "bos_token": model.special_token("bos"),
        "eos_token": model.special_token("eos"),
    });
    if let Some(t) = model.chat_template() {
        tok_cfg["chat_template"] = json!(t);
    }
    write("tokenizer_config.json", &tok_cfg)?;
    write(
        "generation_config.json",
        &json!({"bos_token_id": model.special_id("bos"), "eos_token_id": model.eos_token_ids()}),
    )
}
