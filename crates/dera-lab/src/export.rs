//! Writing a trained model as a Hugging Face Llama checkpoint directory: `config.json`,
//! `model.safetensors` (f16, `[out, in]` linear layout, tied embeddings), `tokenizer.json`,
//! `tokenizer_config.json` and `generation_config.json`.

use std::collections::HashMap;
use std::path::Path;

use dera_models::ModelConfig;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::tokenizer::EOT_ID;

/// The shape of the tiny models.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    /// Vocabulary entries.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            vocab_size: 1536,
            hidden_size: 128,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 384,
            max_position_embeddings: 256,
        }
    }
}

impl TinyConfig {
    /// `config.json` in the current transformers form.
    pub fn to_json(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.hidden_size / self.num_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "tie_word_embeddings": true,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "use_cache": true,
            "bos_token_id": EOT_ID,
            "eos_token_id": EOT_ID,
            "dtype": "float16",
        })
    }

    /// The parsed [`ModelConfig`].
    pub fn model_config(&self) -> Result<ModelConfig> {
        Ok(ModelConfig::from_json(
            &self.to_json(),
            Path::new("config.json"),
        )?)
    }
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| LabError::io(path, e))
}

/// Writes `values` (`(name, f32 values, shape)`) as an f16 `model.safetensors` with the
/// config and generation config into `dir`; tokenizer files are copied from `tokenizer_dir`.
pub fn export(
    dir: &Path,
    cfg: &Value,
    values: &[(String, Vec<f32>, Vec<usize>)],
    tokenizer_dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    write_safetensors_f16(&dir.join("model.safetensors"), values)?;
    write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )?;
    let gen_cfg = json!({"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "do_sample": true});
    write(
        &dir.join("generation_config.json"),
        serde_json::to_string_pretty(&gen_cfg).unwrap(),
    )?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let (from, to) = (tokenizer_dir.join(f), dir.join(f));
        if from != to {
            std::fs::copy(&from, &to).map_err(|e| LabError::io(&from, e))?;
        }
    }
    Ok(())
}

/// Writes f32 values as f16 safetensors.
pub fn write_safetensors_f16(path: &Path, values: &[(String, Vec<f32>, Vec<usize>)]) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = values
        .iter()
        .map(|(n, v, s)| {
            let b = v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            (n.clone(), b, s.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            TensorView::new(safetensors::Dtype::F16, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| LabError::Other(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| LabError::Other(format!("{}: {e}", path.display())))
}
