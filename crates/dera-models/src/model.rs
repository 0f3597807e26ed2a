//! The causal-LM interface and loading a checkpoint directory.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use dera_checkpoint::{Checkpoint, GENERATION_CONFIG_FILE, TensorSource};

use crate::cache::KvCache;
use crate::config::{Architecture, ModelConfig};
use crate::precision::LoadOptions;
use crate::tokenizer::Tokenizer;
use crate::weights::{HostWeights, Weights};
use crate::{Gpt2, Llama, ModelError};

/// A decoder-only language model that extends a caller-owned [`KvCache`].
///
/// This is the extension point for models written outside dera: the engine holds every model
/// as `Arc<dyn CausalLm + Send + Sync>` and mixes them by this contract alone.
///
/// - **Batching**: [`CausalLm::forward`] takes `batch` rows of equal length; row `b` of the
///   returned logits belongs to row `b` of the input.
/// - **KV cache**: the caller owns one cache per model and batch; the model appends what it
///   needs to remember with [`KvCache::append`] (tensors `[B, heads, S, dim]`: row on axis 0,
///   position on axis 2) and always counts the new positions with [`KvCache::advance`]. Rows
///   may be left-padded ([`KvCache::padding`]): a model that attends over the cache must mask
///   padded positions and count positions from each row's first real token.
/// - **Row selection**: the engine drops finished rows ([`KvCache::select_rows`]) and joins
///   new ones ([`KvCache::concat`]) on the cache alone, so a model must keep no per-row state
///   outside it.
pub trait CausalLm {
    /// The device holding the weights (the logits come back on it).
    fn device(&self) -> &Device;

    /// Width of the logits.
    fn vocab_size(&self) -> usize;

    /// The most positions (prompt + generated) the model can attend over.
    fn max_positions(&self) -> usize;

    /// An empty cache for this model.
    fn new_cache(&self) -> KvCache;

    /// Runs `tokens`, `batch` rows of equal length stored row-major, after what `cache` holds, and
    /// returns logits `[batch, t, vocab]` for every new position (`all_positions`) or
    /// `[batch, 1, vocab]` for the last one.
    fn forward(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError>;
}

/// Any supported model.
#[derive(Debug, Clone)]
pub enum Model {
    /// Llama, Mistral, SmolLM2 or Qwen2.
    Llama(Llama),
    /// GPT-2.
    Gpt2(Gpt2),
}

impl Model {
    /// Builds the family named by `cfg` from `weights`.
    pub fn new(cfg: &ModelConfig, weights: &dyn Weights) -> Result<Self, ModelError> {
        Ok(match cfg.architecture {
            Architecture::Llama | Architecture::Qwen2 => Model::Llama(Llama::new(cfg, weights)?),
            Architecture::Gpt2 => Model::Gpt2(Gpt2::new(cfg, weights)?),
        })
    }

    pub(crate) fn check(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &KvCache,
    ) -> Result<usize, ModelError> {
        let cfg = self.config();
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "{} tokens cannot form {batch} non-empty rows of equal length",
                tokens.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {} entries",
                cfg.vocab_size
            )));
        }
        if !cache.is_empty()
            && cache
                .layers
                .first()
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.rows() != batch)
        {
            return Err(ModelError::Input(format!(
                "batch of {batch} rows does not match the cache"
            )));
        }
        if cache.layers.len() != cfg.num_layers {
            return Err(ModelError::Input(format!(
                "cache has {} layers, the model {}",
                cache.layers.len(),
                cfg.num_layers
            )));
        }
        let t = tokens.len() / batch;
        if cfg.architecture == Architecture::Gpt2 && cache.len() + t > cfg.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "sequence of {} positions exceeds n_positions {}",
                cache.len() + t,
                cfg.max_position_embeddings
            )));
        }
        Ok(t)
    }
}

impl Model {
    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Llama(m) => m.config(),
            Model::Gpt2(m) => m.config(),
        }
    }
}

impl CausalLm for Model {
    fn device(&self) -> &Device {
        match self {
            Model::Llama(m) => m.device(),
            Model::Gpt2(m) => m.device(),
        }
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().num_layers)
    }

    fn forward(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError> {
        let t = self.check(tokens, batch, cache)?;
        if rayon::current_thread_index().is_none() && *self.device() == Device::flex() {
            // Run the pass on a worker of the thread pool: each layer's row-split product then
            // forks from a worker (work stealing) instead of waking the pool from outside and
            // sleeping on a latch, about 120 times per token.
            return rayon::scope(|_| self.forward_checked(tokens, batch, t, cache, all_positions));
        }
        self.forward_checked(tokens, batch, t, cache, all_positions)
    }
}

impl Model {
    fn forward_checked(
        &self,
        tokens: &[u32],
        batch: usize,
        t: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError> {
        // A model's own adapter (if any) applies to every row.
        let lora = match self {
            Model::Llama(m) => m.lora.as_ref(),
            Model::Gpt2(m) => m.lora.as_ref(),
        };
        let routes = crate::lora::own_routes(lora, batch * t);
        self.routed_logits(tokens, batch, t, cache, &routes, all_positions)
    }
}

/// A model with everything needed to decode with it.
#[derive(Debug)]
pub struct LoadedModel {
    /// The network.
    pub model: Model,
    /// Its tokenizer (`tokenizer.json`), when the directory has one.
    pub tokenizer: Option<Tokenizer>,
    /// End-of-sequence ids: `generation_config.json` when present, else `config.json`.
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint directory, or the GGUF file.
    pub dir: PathBuf,
}

impl LoadedModel {
    /// The tokenizer, or an error naming the missing `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<&Tokenizer, ModelError> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::Tokenizer {
                path: self.dir.join(dera_checkpoint::TOKENIZER_FILE),
                reason: "file not found".into(),
            })
    }
}

/// Loads the checkpoint in `dir` onto `device`, weights as stored.
pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel, ModelError> {
    load_with(dir, device, &LoadOptions::default())
}

/// Loads the checkpoint in `dir` onto `device`, weight matrices in the format `options` choose.
///
/// On the flex device, matrices kept in their stored precision are read in place from the
/// memory map (no copy); converted or quantized ones are built one tensor at a time, so loading
/// never holds a second full copy of the model.
///
/// `dir` may also be a GGUF file (`*.gguf`): the config, tokenizer, chat template and
/// end-of-sequence ids come from its metadata, Q8_0/Q4_0 matrices stay in their blocks (other
/// types are dequantized once, as are all with `--dtype f32`).
pub fn load_with(
    dir: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    if dera_gguf::is_gguf_path(dir) {
        return load_gguf(dir, device, options);
    }
    let cfg = ModelConfig::from_dir(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    load_from_source_with(dir, &cfg, &ckpt, device, options)
}

/// Loads a model whose config and tokenizer live in `dir` but whose weights come from `source`
/// (for example an in-memory merge).
pub fn load_from_source(
    dir: &Path,
    cfg: &ModelConfig,
    source: &dyn TensorSource,
    device: &Device,
) -> Result<LoadedModel, ModelError> {
    load_from_source_with(dir, cfg, source, device, &LoadOptions::default())
}

/// [`load_from_source`] with weight-format options.
pub fn load_from_source_with(
    dir: &Path,
    cfg: &ModelConfig,
    source: &dyn TensorSource,
    device: &Device,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    let weights = HostWeights::with_options(source, device.clone(), *options);
    let model = Model::new(cfg, &weights)?;
    if dera_gguf::is_gguf_path(dir) {
        // Config and weights given; the tokenizer and EOS ids come from the GGUF file.
        let gguf = open_gguf(dir)?;
        let (tokenizer, eos_token_ids) = gguf_tokenizer(&gguf, cfg)?;
        return Ok(LoadedModel {
            model,
            tokenizer: Some(tokenizer),
            eos_token_ids,
            dir: dir.to_path_buf(),
        });
    }
    let tok_path = dir.join(dera_checkpoint::TOKENIZER_FILE);
    let tokenizer = if tok_path.is_file() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    let eos_token_ids = eos_ids(dir, cfg)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        eos_token_ids,
        dir: dir.to_path_buf(),
    })
}

/// A GGUF file's config (from its metadata), as [`ModelConfig`].
pub fn gguf_config(path: &Path) -> Result<ModelConfig, ModelError> {
    let gguf = open_gguf(path)?;
    ModelConfig::from_json(gguf.config_json(), path)
}

fn open_gguf(path: &Path) -> Result<dera_gguf::GgufModel, ModelError> {
    dera_gguf::GgufModel::open(path)
        .map_err(|e| ModelError::Checkpoint(dera_checkpoint::CheckpointError::Gguf(e.to_string())))
}

fn load_gguf(
    path: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    let gguf = open_gguf(path)?;
    let cfg = ModelConfig::from_json(gguf.config_json(), path)?;
    let weights = HostWeights::with_options(&gguf, device.clone(), *options);
    let model = Model::new(&cfg, &weights)?;
    let (tokenizer, eos_token_ids) = gguf_tokenizer(&gguf, &cfg)?;
    Ok(LoadedModel {
        model,
        tokenizer: Some(tokenizer),
        eos_token_ids,
        dir: path.to_path_buf(),
    })
}

/// The tokenizer and end-of-sequence ids a GGUF file's metadata describes.
fn gguf_tokenizer(
    gguf: &dera_gguf::GgufModel,
    cfg: &ModelConfig,
) -> Result<(Tokenizer, Vec<u32>), ModelError> {
    let path = gguf.path();
    let json = gguf.tokenizer_json().map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tokenizer = Tokenizer::from_json(&json.to_string(), path)?;
    let mut eos_token_ids = gguf.eos_token_ids();
    if eos_token_ids.is_empty() {
        eos_token_ids = cfg.eos_token_ids.clone();
    }
    Ok((tokenizer, eos_token_ids))
}

fn eos_ids(dir: &Path, cfg: &ModelConfig) -> Result<Vec<u32>, ModelError> {
    let path = dir.join(GENERATION_CONFIG_FILE);
    if path.is_file() {
        let v = dera_checkpoint::read_json(&path)?;
        let ids: Vec<u32> = match v.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => Vec::new(),
        };
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    Ok(cfg.eos_token_ids.clone())
}
