//! A GGUF file as the pieces of a Hugging Face checkpoint: `config.json`, tensors under Hugging
//! Face names, tokenizer, chat template and special ids.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use dera_checkpoint::{BlockTensor, CheckpointError, Dtype, StoredTensor, TensorSource};
use serde_json::{Value as Json, json};

use crate::dequant::dequantize;
use crate::{GgmlType, GgufError, GgufFile, TensorInfo, Value};

/// Whether `path` names a GGUF file (a file whose name ends in `.gguf`).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && !path.is_dir()
}

/// The families dera builds from GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// `llama` (Llama 2/3, SmolLM2, Mistral): q/k rows are permuted by llama.cpp's converter.
    Llama,
    /// `qwen2`: q/k/v biases, no permutation.
    Qwen2,
}

/// How a Hugging Face tensor is read from the file.
#[derive(Debug, Clone)]
struct Mapped {
    /// Index into the file's tensors.
    index: usize,
    /// Undo llama.cpp's q/k permutation with this many heads.
    unpermute: Option<usize>,
}

/// A GGUF model file: its config, tensors under Hugging Face names and its tokenizer metadata.
#[derive(Debug)]
pub struct GgufModel {
    file: GgufFile,
    arch: Arch,
    config: Json,
    tensors: BTreeMap<String, Mapped>,
}

impl GgufModel {
    /// Opens and validates `path`: a supported architecture, the hyper-parameters and every
    /// tensor the model needs.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = GgufFile::open(path)?;
        Self::from_file(file)
    }

    /// Builds the model view of a parsed file.
    pub fn from_file(file: GgufFile) -> Result<Self, GgufError> {
        let m = Meta { file: &file };
        let arch_name = m.str("general.architecture")?;
        let arch = match arch_name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(GgufError::Unsupported {
                    path: file.path().to_path_buf(),
                    reason: format!(
                        "architecture `{other}` is not supported (llama, mistral and qwen2 are)"
                    ),
                });
            }
        };
        let config = m.config(arch_name, arch)?;
        let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        let mut tensors = BTreeMap::new();
        for (i, t) in file.tensors().iter().enumerate() {
            let Some(hf) = hf_name(&t.name) else {
                continue;
            };
            let unpermute = match (arch, t.name.rsplit('.').nth(1)) {
                (Arch::Llama, Some("attn_q")) => Some(heads),
                (Arch::Llama, Some("attn_k")) => Some(kv_heads),
                _ => None,
            };
            if let Some(h) = unpermute {
                let rows = t.shape.first().copied().unwrap_or(0);
                if h == 0 || !rows.is_multiple_of(2 * h) {
                    return Err(GgufError::Tensor {
                        path: file.path().to_path_buf(),
                        tensor: t.name.clone(),
                        reason: format!("{rows} rows cannot be split into {h} heads of even width"),
                    });
                }
            }
            tensors.insert(
                hf,
                Mapped {
                    index: i,
                    unpermute,
                },
            );
        }
        Ok(Self {
            file,
            arch,
            config,
            tensors,
        })
    }

    /// The parsed file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The model's hyper-parameters as a transformers `config.json` (from the `{arch}.*` and
    /// `tokenizer.ggml.*` metadata; `tie_word_embeddings` when there is no `output` tensor).
    pub fn config_json(&self) -> &Json {
        &self.config
    }

    /// The chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.file
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
    }

    /// The text of token `key` (`bos`, `eos`, ...: `tokenizer.ggml.{key}_token_id`), if any.
    pub fn special_token(&self, key: &str) -> Option<&str> {
        let id = self.special_id(key)?;
        self.file
            .get("tokenizer.ggml.tokens")?
            .as_array()?
            .get(id as usize)?
            .as_str()
    }

    /// Id of special token `key` (`bos`, `eos`, `padding`, `unknown`), if the file names one.
    pub fn special_id(&self, key: &str) -> Option<u32> {
        self.file
            .get(&format!("tokenizer.ggml.{key}_token_id"))?
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
    }

    /// The end-of-sequence ids generation stops at: `tokenizer.ggml.eos_token_id` and, when
    /// present, `tokenizer.ggml.eot_token_id` (llama.cpp's end of turn).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = ["eos", "eot"]
            .iter()
            .filter_map(|k| self.special_id(k))
            .collect();
        ids.dedup();
        ids
    }

    /// The `tokenizer.json` transformers builds from this file's metadata.
    pub fn tokenizer_json(&self) -> Result<Json, GgufError> {
        crate::tokenizer::tokenizer_json(&self.file)
    }

    fn err(&self, name: &str, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::Gguf(
            GgufError::Tensor {
                path: self.path().to_path_buf(),
                tensor: name.to_string(),
                reason: reason.into(),
            }
            .to_string(),
        )
    }

    fn mapped(&self, name: &str) -> Result<(&Mapped, &TensorInfo), CheckpointError> {
        let m = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
                dir: self.path().to_path_buf(),
            })?;
        Ok((m, &self.file.tensors()[m.index]))
    }

    /// Every tensor the model uses: its Hugging Face name and row-major shape.
    pub fn hf_names(&self) -> impl Iterator<Item = (&str, Vec<usize>)> {
        self.tensors
            .iter()
            .map(|(n, m)| (n.as_str(), self.file.tensors()[m.index].shape.clone()))
    }

    /// Whether the model is a llama-family one (its q/k rows are permuted in the file).
    pub fn permutes_qk(&self) -> bool {
        self.arch == Arch::Llama
    }
}

/// Row `r` of a q/k matrix in Hugging Face order lies at this row of llama.cpp's order: per head
/// of `d` rows, Hugging Face keeps the two rotary halves apart (`j * d/2 + i`), llama.cpp
/// interleaves them (`i * 2 + j`).
fn permuted_row(r: usize, heads: usize, rows: usize) -> usize {
    let d = rows / heads;
    let half = d / 2;
    let (h, within) = (r / d, r % d);
    let (j, i) = (within / half, within % half);
    h * d + i * 2 + j
}

/// Reorders whole rows (`row_bytes` each) from llama.cpp's q/k order to Hugging Face's.
fn unpermute_rows<T: Copy>(data: &[T], rows: usize, heads: usize) -> Vec<T> {
    let per = data.len() / rows.max(1);
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        let src = permuted_row(r, heads, rows);
        out.extend_from_slice(&data[src * per..(src + 1) * per]);
    }
    out
}

impl TensorSource for GgufModel {
    fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        let (m, info) = self.mapped(name)?;
        let mut values = vec![0f32; info.len()];
        dequantize(info.ty, self.file.bytes(info), &mut values)
            .map_err(|e| self.err(&info.name, e.to_string()))?;
        if let Some(h) = m.unpermute {
            values = unpermute_rows(&values, info.shape[0], h);
        }
        Ok((values, info.shape.clone()))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn origin(&self) -> &Path {
        self.path()
    }

    fn stored(&self, name: &str) -> Option<StoredTensor> {
        let (m, info) = self.mapped(name).ok()?;
        let dtype = match info.ty {
            GgmlType::F32 => Dtype::F32,
            GgmlType::F16 => Dtype::F16,
            GgmlType::Bf16 => Dtype::BF16,
            _ => return None,
        };
        if m.unpermute.is_some() {
            return None;
        }
        let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = self.file.buffer().clone();
        Some(StoredTensor {
            dtype,
            shape: info.shape.clone(),
            buffer,
            range: info.range.clone(),
        })
    }

    fn stored_blocks(&self, name: &str) -> Option<Result<BlockTensor, CheckpointError>> {
        let (m, info) = self.mapped(name).ok()?;
        let format = info.ty.block_format()?;
        if info.shape.len() != 2 {
            return None;
        }
        let (buffer, range): (Arc<dyn AsRef<[u8]> + Send + Sync>, _) = match m.unpermute {
            None => (self.file.buffer().clone(), info.range.clone()),
            Some(h) => {
                let bytes = unpermute_rows(self.file.bytes(info), info.shape[0], h);
                let n = bytes.len();
                (Arc::new(bytes), 0..n)
            }
        };
        Some(Ok(BlockTensor {
            format,
            shape: info.shape.clone(),
            buffer,
            range,
        }))
    }
}

/// The Hugging Face name of a llama.cpp tensor, if the model uses it.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{n}.{hf}.{kind}"))
}

/// Typed metadata reads that name the key in errors.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn err(&self, key: &str, reason: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.file.path().to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
    fn str(&self, key: &str) -> Result<&str, GgufError> {
        match self.file.get(key) {
            None => Err(self.err(key, "missing")),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, "expected a string")),
        }
    }
    fn opt_uint(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.err(key, format!("expected a non-negative integer, found {v:?}"))
            }),
        }
    }
    fn uint(&self, key: &str) -> Result<u64, GgufError> {
        match self.opt_uint(key)? {
            Some(0) => Err(self.err(key, "must be positive")),
            Some(n) => Ok(n),
            None => Err(self.err(key, "missing")),
        }
    }
    fn opt_num(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v:?}"))),
        }
    }

    /// The transformers `config.json` equivalent.
    fn config(&self, a: &str, arch: Arch) -> Result<Json, GgufError> {
        let key = |k: &str| format!("{a}.{k}");
        let path = self.file.path();
        let hidden = self.uint(&key("embedding_length"))?;
        let heads = self.uint(&key("attention.head_count"))?;
        let kv_heads = self
            .opt_uint(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        let embd = self
            .file
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::Tensor {
                path: path.to_path_buf(),
                tensor: "token_embd.weight".into(),
                reason: "missing: the model has no token embedding".into(),
            })?;
        let vocab = match self.opt_uint(&key("vocab_size"))? {
            Some(v) => v,
            None => embd.shape.first().copied().unwrap_or(0) as u64,
        };
        let head_dim = match self.opt_uint(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden / heads,
        };
        if let Some(scaling) = self
            .file
            .get(&key("rope.scaling.type"))
            .and_then(Value::as_str)
            && scaling != "none"
            && scaling != "linear"
        {
            return Err(GgufError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("RoPE scaling `{scaling}` is not supported (none and linear are)"),
            });
        }
        if self.file.tensor("rope_freqs.weight").is_some() {
            return Err(GgufError::Unsupported {
                path: path.to_path_buf(),
                reason: "the file carries `rope_freqs.weight` (Llama 3.1 RoPE scaling), which dera does not read from GGUF yet".into(),
            });
        }
        let default_theta = if arch == Arch::Qwen2 {
            1_000_000.0
        } else {
            10_000.0
        };
        let theta = self
            .opt_num(&key("rope.freq_base"))?
            .unwrap_or(default_theta);
        let eps = self
            .opt_num(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let mut rope = json!({"rope_type": "default", "rope_theta": theta});
        if self
            .file
            .get(&key("rope.scaling.type"))
            .and_then(Value::as_str)
            == Some("linear")
        {
            let factor = self.opt_num(&key("rope.scaling.factor"))?.unwrap_or(1.0);
            rope = json!({"rope_type": "linear", "rope_theta": theta, "factor": factor});
        }
        let tied = self.file.tensor("output.weight").is_none();
        let id = |k: &str| -> Json {
            self.file
                .get(&format!("tokenizer.ggml.{k}_token_id"))
                .and_then(Value::as_u64)
                .map_or(Json::Null, |x| json!(x))
        };
        let (archs, model_type) = match arch {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        Ok(json!({
            "architectures": [archs],
            "model_type": model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": self.uint(&key("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "intermediate_size": self.uint(&key("feed_forward_length"))?,
            "rms_norm_eps": eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.opt_uint(&key("context_length"))?.unwrap_or(2048),
            "tie_word_embeddings": tied,
            "attention_bias": arch == Arch::Qwen2,
            "mlp_bias": false,
            "hidden_act": "silu",
            "bos_token_id": id("bos"),
            "eos_token_id": id("eos"),
            "dtype": "gguf",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` (reshape(h, 2, d/2, ...).swapaxes(1, 2)): the row Hugging Face
    /// keeps at `r` is written at `permuted_row(r)`.
    #[test]
    fn permutation_matches_llama_cpp() {
        let (heads, rows) = (2, 8);
        let hf: Vec<usize> = (0..rows).collect();
        // convert_hf_to_gguf: out[h, i, j] = in[h, j, i] with in viewed [h, 2, d/2].
        let mut gguf = vec![0; rows];
        let d = rows / heads;
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    gguf[h * d + i * 2 + j] = hf[h * d + j * d / 2 + i];
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, rows, heads), hf);
    }

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.3.attn_q.bias").as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
