//! Random Llama-family models built in memory, for benchmarks and tests (no files needed).
//!
//! [`Shape::SMOLLM2_135M`] is the decode-bench workhorse: [`random_model`] fills a shape with
//! deterministic xorshift weights (matrices with standard deviation 0.02, norms at 1) and loads
//! it like a checkpoint, so timings and numerics match a real model of that shape.

use std::path::Path;

use dera_checkpoint::TensorMap;

use crate::{Device, LoadOptions, LoadedModel, ModelConfig, ModelError, load_from_source_with};

/// The dimensions of a Llama-family model (tied embeddings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
}

impl Shape {
    /// HuggingFaceTB/SmolLM2-135M (tied embeddings, rope_theta 1e5, rms eps 1e-5).
    pub const SMOLLM2_135M: Shape = Shape {
        vocab: 49_152,
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        intermediate: 1536,
    };

    /// The same shape with `layers` decoder layers.
    pub fn with_layers(self, layers: usize) -> Shape {
        Shape { layers, ..self }
    }

    /// The `config.json` transformers would write for this shape.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate,
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": true,
            "bos_token_id": 0,
            "eos_token_id": 0,
        })
    }

    /// The parsed configuration (fails for an inconsistent shape, e.g. heads not dividing).
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json(&self.config_json(), "config.json".as_ref())
    }

    /// Number of parameters (tied head counted once).
    pub fn params(&self) -> usize {
        let (d, hd, ff) = (self.hidden, self.head_dim, self.intermediate);
        let attn = d * self.heads * hd * 2 + d * self.kv_heads * hd * 2;
        let per_layer = attn + 3 * d * ff + 2 * d;
        self.vocab * d + self.layers * per_layer + d
    }

    /// Bytes of `f32` weights a decode step has to stream from memory.
    pub fn weight_bytes(&self) -> usize {
        4 * self.params()
    }
}

/// xorshift64: small, fast and deterministic.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator; nearby seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }

    /// Uniform in `[-0.5, 0.5)`.
    pub fn next_centered(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    /// `n` uniform values with standard deviation `std`.
    pub fn fill(&mut self, n: usize, std: f32) -> Vec<f32> {
        let scale = std * 12f32.sqrt();
        (0..n).map(|_| self.next_centered() * scale).collect()
    }
}

impl Shape {
    /// Every linear layer of one decoder layer: (Hugging Face name, out features, in features).
    pub fn linears(&self) -> [(&'static str, usize, usize); 7] {
        let (d, q, kv, ff) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        [
            ("self_attn.q_proj", q, d),
            ("self_attn.k_proj", kv, d),
            ("self_attn.v_proj", kv, d),
            ("self_attn.o_proj", d, q),
            ("mlp.gate_proj", ff, d),
            ("mlp.up_proj", ff, d),
            ("mlp.down_proj", d, ff),
        ]
    }
}

/// Hugging Face-named weights of a random model: matrices with std 0.02, norms at 1.
pub fn random_weights(shape: &Shape, seed: u64) -> TensorMap {
    let Shape {
        vocab, hidden: d, ..
    } = *shape;
    let mut rng = XorShift::new(seed);
    let mut map = TensorMap::new(format!("random-{seed}"));
    map.insert(
        "model.embed_tokens.weight",
        rng.fill(vocab * d, 0.02),
        vec![vocab, d],
    );
    map.insert("model.norm.weight", vec![1.0; d], vec![d]);
    for i in 0..shape.layers {
        let p = format!("model.layers.{i}");
        for (name, out, inp) in shape.linears() {
            map.insert(
                format!("{p}.{name}.weight"),
                rng.fill(out * inp, 0.02),
                vec![out, inp],
            );
        }
        map.insert(format!("{p}.input_layernorm.weight"), vec![1.0; d], vec![d]);
        map.insert(
            format!("{p}.post_attention_layernorm.weight"),
            vec![1.0; d],
            vec![d],
        );
    }
    map
}

/// A random model of `shape` on `device` (no tokenizer); different seeds give different models.
pub fn random_model(shape: &Shape, seed: u64, device: &Device) -> Result<LoadedModel, ModelError> {
    random_model_with(shape, seed, device, &LoadOptions::default())
}

/// [`random_model`] with its weight matrices in the format `options` choose.
pub fn random_model_with(
    shape: &Shape,
    seed: u64,
    device: &Device,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    let map = random_weights(shape, seed);
    // A directory that does not exist: no tokenizer, no generation config.
    load_from_source_with(
        Path::new("<random model>"),
        &shape.config()?,
        &map,
        device,
        options,
    )
}

/// A random PEFT LoRA adapter for `shape`: rank `rank`, `lora_alpha = 2 * rank`, on the
/// q/k/v/o and gate/up/down projections of every layer, `A` and `B` with std 0.02 (non-zero
/// `B`, unlike a freshly initialised adapter).
pub fn random_adapter(
    shape: &Shape,
    rank: usize,
    seed: u64,
) -> Result<dera_lora::Adapter, ModelError> {
    let dir = Path::new("<random adapter>");
    let config = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    });
    let config = dera_lora::AdapterConfig::from_json(config, &dir.join("adapter_config.json"))?;
    let mut rng = XorShift::new(seed);
    let mut modules = std::collections::BTreeMap::new();
    for i in 0..shape.layers {
        for (name, out, inp) in shape.linears() {
            let pair = dera_lora::LoraPair {
                rank,
                in_features: inp,
                out_features: out,
                a: rng.fill(rank * inp, 0.02),
                b: rng.fill(out * rank, 0.02),
            };
            modules.insert(format!("model.layers.{i}.{name}"), pair);
        }
    }
    Ok(dera_lora::Adapter {
        dir: dir.to_path_buf(),
        config,
        modules,
    })
}

/// A second handle on the same weights (burn tensors are reference counted).
pub fn share(m: &LoadedModel) -> LoadedModel {
    LoadedModel {
        model: m.model.clone(),
        tokenizer: None,
        eos_token_ids: m.eos_token_ids.clone(),
        dir: m.dir.clone(),
    }
}

/// A deterministic prompt of `len` ordinary token ids (never 0, the EOS of [`Shape`]'s config).
pub fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    let mut rng = XorShift::new(7);
    (0..len)
        .map(|_| 1 + (rng.next_u64() % (vocab.max(2) as u64 - 1)) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CausalLm;

    #[test]
    fn a_small_random_model_loads_and_runs() {
        let shape = Shape {
            vocab: 64,
            hidden: 16,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            intermediate: 24,
        };
        let device = Device::flex();
        let m = random_model(&shape, 3, &device).unwrap();
        let cfg = shape.config().unwrap();
        let weights = random_weights(&shape, 3);
        let counted: usize = weights
            .names()
            .map(|n| weights.get(n).unwrap().1.iter().product::<usize>())
            .sum();
        assert_eq!(counted, shape.params());
        assert_eq!(cfg.vocab_size, 64);
        let ids = prompt(5, shape.vocab);
        assert!(ids.iter().all(|&t| (1..64).contains(&t)));
        let mut cache = m.model.new_cache();
        let out = m.model.forward(&ids, 1, &mut cache, false).unwrap();
        assert_eq!(out.dims(), [1, 1, 64]);
        // Seeds matter; the same seed is the same model.
        let a = random_weights(&shape, 1);
        let b = random_weights(&shape, 2);
        let name = "model.embed_tokens.weight";
        assert_ne!(a.get(name), b.get(name));
        assert_eq!(a.get(name), random_weights(&shape, 1).get(name));
    }
}
