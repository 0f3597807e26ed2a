//! `config.json` in the current transformers form (`rope_parameters`, `dtype`) and the legacy one
//! (`rope_theta`, `rope_scaling`, `torch_dtype`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ModelError;

/// The model families dera implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2 and Mistral (RMSNorm, RoPE, GQA, SwiGLU).
    Llama,
    /// Qwen2: Llama with q/k/v biases.
    Qwen2,
    /// GPT-2: learned positions, LayerNorm, gelu_new, Conv1D weights.
    Gpt2,
}

/// `architectures` entries and `model_type` values that map to each family.
const KNOWN: &[(&str, &str, Architecture)] = &[
    ("LlamaForCausalLM", "llama", Architecture::Llama),
    ("MistralForCausalLM", "mistral", Architecture::Llama),
    ("Qwen2ForCausalLM", "qwen2", Architecture::Qwen2),
    ("GPT2LMHeadModel", "gpt2", Architecture::Gpt2),
];

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (Llama, Qwen2).
    Silu,
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU with the exact error function (`gelu`).
    GeluErf,
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3's piecewise frequency scaling.
    Llama3 {
        /// Scale for low frequencies.
        factor: f32,
        /// Wavelength threshold numerator for low frequencies.
        low_freq_factor: f32,
        /// Wavelength threshold numerator for high frequencies.
        high_freq_factor: f32,
        /// The context length the model was trained with.
        original_max_position_embeddings: f32,
    },
}

/// The hyper-parameters of a supported model, read from `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Which family.
    pub architecture: Architecture,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Normalisation epsilon.
    pub norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Whether the output head reuses the input embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o projections (Qwen2 has them on q/k/v only).
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// The MLP non-linearity.
    pub activation: Activation,
    /// GPT-2: scale attention scores by `1/sqrt(head_dim)` (`scale_attn_weights`).
    pub scale_attn_weights: bool,
    /// GPT-2: also divide attention scores by `layer_index + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// End-of-sequence ids from the config (generation_config.json may add more).
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence id, if any.
    pub bos_token_id: Option<u32>,
    /// The stored dtype (`dtype` or `torch_dtype`), informational.
    pub dtype: Option<String>,
}

impl ModelConfig {
    /// Parses `config.json` content; `path` names the file in errors.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ModelError> {
        let r = Reader {
            v: value,
            path: path.to_path_buf(),
        };
        let architecture = r.architecture()?;
        match architecture {
            Architecture::Gpt2 => r.gpt2(),
            Architecture::Llama | Architecture::Qwen2 => r.llama(architecture),
        }
    }

    /// Reads and parses `dir/config.json`, or, when `dir` is a GGUF file, the config its
    /// metadata describes.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        if dera_gguf::is_gguf_path(dir) {
            return crate::gguf_config(dir);
        }
        let path = dir.join(dera_checkpoint::CONFIG_FILE);
        let value = dera_checkpoint::read_json(&path)?;
        Self::from_json(&value, &path)
    }

    /// Weights of the model, counted from the shapes (embeddings, attention, MLP, a separate
    /// head unless tied; norms and biases left out): what a decode step reads.
    pub fn matrix_params(&self) -> usize {
        let (d, ff) = (self.hidden_size, self.intermediate_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mlp = match self.architecture {
            Architecture::Gpt2 => 2 * d * ff,
            Architecture::Llama | Architecture::Qwen2 => 3 * d * ff,
        };
        let layer = d * (2 * q + 2 * kv) + mlp;
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        self.num_layers
            .saturating_mul(layer)
            .saturating_add(heads * self.vocab_size * d)
    }

    /// The supported architectures, for messages.
    pub fn supported() -> String {
        KNOWN
            .iter()
            .map(|(a, m, _)| format!("{a} ({m})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Reader<'a> {
    v: &'a Value,
    path: PathBuf,
}

impl Reader<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn architecture(&self) -> Result<Architecture, ModelError> {
        let archs: Vec<&str> = self
            .v
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for arch in &archs {
            if let Some((_, _, a)) = KNOWN.iter().find(|(name, _, _)| name == arch) {
                return Ok(*a);
            }
        }
        let model_type = self.v.get("model_type").and_then(Value::as_str);
        if archs.is_empty()
            && let Some((_, _, a)) = KNOWN.iter().find(|(_, mt, _)| Some(*mt) == model_type)
        {
            return Ok(*a);
        }
        let found = if archs.is_empty() {
            model_type
                .unwrap_or("<none: no `architectures` or `model_type`>")
                .to_string()
        } else {
            archs.join(", ")
        };
        Err(ModelError::UnsupportedArchitecture {
            path: self.path.clone(),
            found,
            supported: ModelConfig::supported(),
        })
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, found {x}"))
            }),
        }
    }

    fn usize(&self, field: &str) -> Result<usize, ModelError> {
        match self.opt_usize(field)? {
            Some(0) => Err(self.err(field, "must be positive")),
            Some(n) => Ok(n),
            None => Err(self.err(field, "missing")),
        }
    }

    fn opt_f64(&self, v: &Value, field: &str) -> Result<Option<f64>, ModelError> {
        match v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a number, found {x}"))),
        }
    }

    /// A number that must be finite and positive (also once rounded to `f32`), or `None`.
    fn opt_positive(&self, v: &Value, field: &str) -> Result<Option<f64>, ModelError> {
        match self.opt_f64(v, field)? {
            Some(x) if !(x > 0.0 && (x as f32).is_finite()) => Err(self.err(
                field,
                format!("must be a positive number below 3.4e38, found {x}"),
            )),
            other => Ok(other),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> bool {
        self.v
            .get(field)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    fn ids(&self, field: &str) -> Vec<u32> {
        match self.v.get(field) {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn dtype(&self) -> Option<String> {
        ["dtype", "torch_dtype"]
            .iter()
            .find_map(|k| self.v.get(*k).and_then(Value::as_str))
            .map(str::to_string)
    }

    fn llama(&self, architecture: Architecture) -> Result<ModelConfig, ModelError> {
        let hidden_size = self.usize("hidden_size")?;
        let num_heads = self.usize("num_attention_heads")?;
        let num_kv_heads = self.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(self.err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = match self.opt_usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(self.err(
                    "head_dim",
                    "missing and hidden_size is not a multiple of the heads",
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(self.err(
                "head_dim",
                format!("RoPE needs an even head_dim, found {head_dim}"),
            ));
        }
        let (rope_theta, rope_scaling) = self.rope()?;
        let is_qwen = architecture == Architecture::Qwen2;
        Ok(ModelConfig {
            architecture,
            vocab_size: self.usize("vocab_size")?,
            hidden_size,
            num_layers: self.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: self.usize("intermediate_size")?,
            norm_eps: self.opt_positive(self.v, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: self.bool_or("tie_word_embeddings", false),
            attention_bias: is_qwen || self.bool_or("attention_bias", false),
            mlp_bias: self.bool_or("mlp_bias", false),
            activation: match self
                .v
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu")
            {
                "silu" | "swish" => Activation::Silu,
                other => {
                    return Err(self.err(
                        "hidden_act",
                        format!("unsupported {other:?}; supported: silu"),
                    ));
                }
            },
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            eos_token_ids: self.ids("eos_token_id"),
            bos_token_id: self.ids("bos_token_id").first().copied(),
            dtype: self.dtype(),
        })
    }

    /// RoPE base and scaling from `rope_parameters` (current) or `rope_theta`/`rope_scaling`.
    fn rope(&self) -> Result<(f32, RopeScaling), ModelError> {
        let params = self.v.get("rope_parameters").filter(|p| p.is_object());
        let legacy = self.v.get("rope_scaling").filter(|p| p.is_object());
        // A base of zero or below gives NaN frequencies, and so NaN logits.
        let theta = params
            .map(|p| self.opt_positive(p, "rope_theta"))
            .transpose()?
            .flatten()
            .or(self.opt_positive(self.v, "rope_theta")?)
            .unwrap_or(10_000.0);
        let Some(scaling) = params.or(legacy) else {
            return Ok((theta as f32, RopeScaling::None));
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let field = |name: &str| -> Result<f32, ModelError> {
            self.opt_positive(scaling, name)?
                .map(|x| x as f32)
                .ok_or_else(|| self.err(&format!("rope_scaling.{name}"), "missing"))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: field("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_position_embeddings: field("original_max_position_embeddings")?,
            },
            other => {
                return Err(self.err(
                    "rope_type",
                    format!("unsupported RoPE type {other:?}; supported: default, linear, llama3"),
                ));
            }
        };
        Ok((theta as f32, scaling))
    }

    fn gpt2(&self) -> Result<ModelConfig, ModelError> {
        let hidden_size = self.usize("n_embd")?;
        let num_heads = self.usize("n_head")?;
        if hidden_size % num_heads != 0 {
            return Err(self.err(
                "n_head",
                format!("{num_heads} does not divide n_embd {hidden_size}"),
            ));
        }
        let act = self
            .v
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        let activation = match act {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => {
                return Err(self.err(
                    "activation_function",
                    format!("unsupported {other:?}; supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu"),
                ));
            }
        };
        Ok(ModelConfig {
            architecture: Architecture::Gpt2,
            vocab_size: self.usize("vocab_size")?,
            hidden_size,
            num_layers: self.usize("n_layer")?,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads,
            intermediate_size: self.opt_usize("n_inner")?.unwrap_or(4 * hidden_size),
            norm_eps: self
                .opt_positive(self.v, "layer_norm_epsilon")?
                .unwrap_or(1e-5),
            rope_theta: 0.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: self.usize("n_positions")?,
            tie_word_embeddings: true,
            attention_bias: true,
            mlp_bias: true,
            activation,
            scale_attn_weights: self.bool_or("scale_attn_weights", true),
            scale_attn_by_inverse_layer_idx: self.bool_or("scale_attn_by_inverse_layer_idx", false),
            eos_token_ids: self.ids("eos_token_id"),
            bos_token_id: self.ids("bos_token_id").first().copied(),
            dtype: self.dtype(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn llama() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16})
    }

    #[test]
    fn current_and_legacy_rope_forms_agree() {
        let mut current = llama();
        current["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
        let mut legacy = llama();
        legacy["rope_theta"] = json!(500000.0);
        legacy["rope_scaling"] = json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
        let (a, b) = (parse(current).unwrap(), parse(legacy).unwrap());
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert_eq!(a.rope_theta, b.rope_theta);
        assert!(matches!(
            a.rope_scaling,
            RopeScaling::Llama3 { factor: 8.0, .. }
        ));
    }

    #[test]
    fn matrix_params_count_smollm2_135m() {
        // SmolLM2-135M: 134,515,008 parameters, of which 35,136 are RMSNorm weights.
        let c = parse(
            json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152,
            "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": true}),
        )
        .unwrap();
        assert_eq!(c.matrix_params(), 134_515_008 - 35_136);
        let untied = ModelConfig {
            tie_word_embeddings: false,
            ..c
        };
        assert_eq!(untied.matrix_params(), 134_479_872 + 49152 * 576);
    }

    #[test]
    fn unsupported_architecture_lists_supported_ones() {
        let err = parse(json!({"architectures": ["BertModel"]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BertModel")
                && err.contains("LlamaForCausalLM")
                && err.contains("GPT2LMHeadModel"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("`hidden_size`") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn unknown_rope_type_is_an_error() {
        let mut v = llama();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn rope_theta_and_epsilons_must_be_positive_and_finite() {
        for bad in [json!(0.0), json!(-10000.0), json!(1e39)] {
            let mut v = llama();
            v["rope_theta"] = bad.clone();
            let err = parse(v).unwrap_err().to_string();
            assert!(
                err.contains("`rope_theta`") && err.contains("positive"),
                "{err}"
            );
            let mut v = llama();
            v["rope_parameters"] = json!({"rope_theta": bad, "rope_type": "default"});
            assert!(parse(v).is_err());
        }
        let mut v = llama();
        v["rms_norm_eps"] = json!(-1e-6);
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("`rms_norm_eps`"), "{err}");
        let mut v = llama();
        v["rope_scaling"] = json!({"type": "linear", "factor": 0.0});
        assert!(parse(v).unwrap_err().to_string().contains("`factor`"));
        let mut v = llama();
        v["rope_theta"] = json!(500000.0);
        assert_eq!(parse(v).unwrap().rope_theta, 500000.0);
    }
}
