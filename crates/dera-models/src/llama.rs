//! The Llama family (Llama 2/3, Mistral, SmolLM2) and Qwen2, which adds q/k/v biases.

use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::ModelError;
use crate::cache::KvCache;
use crate::config::{Architecture, ModelConfig};
use crate::layers::{
    self, Dense, Linear, attention, attention_bias, extend_cache, merge_heads, rms_norm,
    split_heads,
};
use crate::lora::{self, DOWN, LoraWeights, OUT, QKV, Route, UP};
use crate::rope::{self, Rope};
use crate::weights::{Weights, dense, embedding, output_head};

#[derive(Debug, Clone)]
struct Block {
    input_norm: Tensor<1>,
    /// q, k and v projections fused into one `[(heads + 2 kv_heads) * head_dim, hidden]` matrix.
    qkv: Linear,
    o: Linear,
    post_norm: Tensor<1>,
    /// Gate and up projections fused into one `[hidden, 2 * intermediate]` matrix.
    gate_up: Linear,
    down: Linear,
}

/// A Llama-family decoder (also Mistral and Qwen2).
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: ModelConfig,
    device: Device,
    embed: Dense,
    blocks: Vec<Block>,
    norm: Tensor<1>,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    lm_head: Option<Dense>,
    rope: Rope,
    /// A LoRA adapter applied to every row ([`crate::Model::with_adapter`]).
    pub(crate) lora: Option<LoraWeights>,
}

impl Llama {
    /// Builds the model from Hugging Face-named weights.
    pub fn new(cfg: &ModelConfig, w: &dyn Weights) -> Result<Self, ModelError> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd, ff) = (
            cfg.num_heads * hd,
            cfg.num_kv_heads * hd,
            cfg.intermediate_size,
        );
        let qkv_bias = cfg.attention_bias;
        let o_bias = cfg.attention_bias && cfg.architecture != Architecture::Qwen2;
        let linear =
            |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear, ModelError> {
                Ok(Linear {
                    weight: dense(w, &format!("{name}.weight"), out, inp)?,
                    bias: if bias {
                        Some(w.vector(&format!("{name}.bias"), out)?)
                    } else {
                        None
                    },
                })
            };
        let embed = embedding(w, "model.embed_tokens.weight", cfg.vocab_size, d)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(output_head(w, "lm_head.weight", cfg.vocab_size, d)?)
        };
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            blocks.push(Block {
                input_norm: w.vector(&format!("{p}.input_layernorm.weight"), d)?,
                qkv: Linear::fuse(vec![
                    linear(&format!("{p}.self_attn.q_proj"), qd, d, qkv_bias)?,
                    linear(&format!("{p}.self_attn.k_proj"), kvd, d, qkv_bias)?,
                    linear(&format!("{p}.self_attn.v_proj"), kvd, d, qkv_bias)?,
                ]),
                o: linear(&format!("{p}.self_attn.o_proj"), d, qd, o_bias)?,
                post_norm: w.vector(&format!("{p}.post_attention_layernorm.weight"), d)?,
                gate_up: Linear::fuse(vec![
                    linear(&format!("{p}.mlp.gate_proj"), ff, d, cfg.mlp_bias)?,
                    linear(&format!("{p}.mlp.up_proj"), ff, d, cfg.mlp_bias)?,
                ]),
                down: linear(&format!("{p}.mlp.down_proj"), d, ff, cfg.mlp_bias)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            device: w.device().clone(),
            embed,
            blocks,
            norm: w.vector("model.norm.weight", d)?,
            lm_head,
            rope: Rope::new(cfg),
            lora: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `tokens` (`[b, t]` row-major) and returns hidden states `[b*t, hidden]` after the
    /// final norm.
    pub(crate) fn hidden(
        &self,
        tokens: Tensor<1, burn::tensor::Int>,
        b: usize,
        t: usize,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let routes = lora::own_routes(self.lora.as_ref(), b * t);
        self.hidden_routed(tokens, b, t, cache, &routes)
    }

    /// [`Self::hidden`] with LoRA updates applied to the rows each route names.
    pub(crate) fn hidden_routed(
        &self,
        tokens: Tensor<1, burn::tensor::Int>,
        b: usize,
        t: usize,
        cache: &mut KvCache,
        routes: &[Route<'_>],
    ) -> Tensor<2> {
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let mut x = self.embed.rows(tokens, &self.device);
        let (cos, sin) = self
            .rope
            .tables(&layers::positions(cache, b, t), &self.device);
        let bias = attention_bias(cache, b, t, &self.device);
        let scale = 1.0 / (hd as f64).sqrt();
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = rms_norm(x.clone(), &blk.input_norm, cfg.norm_eps);
            let qkv = blk.qkv.forward_lora(h, &lora::updates(routes, i, QKV));
            let (qd, kvd) = (nh * hd, nkv * hd);
            let q = split_heads(qkv.clone().narrow(1, 0, qd), b, t, nh, hd);
            let k = split_heads(qkv.clone().narrow(1, qd, kvd), b, t, nkv, hd);
            let v = split_heads(qkv.narrow(1, qd + kvd, kvd), b, t, nkv, hd);
            let (q, k) = (rope::apply(q, &cos, &sin), rope::apply(k, &cos, &sin));
            let (k, v) = extend_cache(cache, i, k, v);
            let a = attention(q, k, v, bias.as_ref(), scale);
            x = x + blk
                .o
                .forward_lora(merge_heads(a), &lora::updates(routes, i, OUT));
            let h = rms_norm(x.clone(), &blk.post_norm, cfg.norm_eps);
            let gu = blk.gate_up.forward_lora(h, &lora::updates(routes, i, UP));
            let ff = gu.dims()[1] / 2;
            let m = silu(gu.clone().narrow(1, 0, ff)) * gu.narrow(1, ff, ff);
            x = x + blk.down.forward_lora(m, &lora::updates(routes, i, DOWN));
        }
        cache.len += t;
        rms_norm(x, &self.norm, cfg.norm_eps)
    }

    /// Addresses of the host weight matrices (flex), to check that models share them.
    pub(crate) fn host_matrix_addresses(&self) -> Vec<usize> {
        let mut v = self.embed.host_addresses();
        for b in &self.blocks {
            for l in [&b.qkv, &b.o, &b.gate_up, &b.down] {
                v.extend(l.weight.host_addresses());
            }
        }
        v
    }

    /// Logits `[n, vocab]` of hidden states `[n, hidden]`.
    pub(crate) fn head(&self, h: Tensor<2>) -> Tensor<2> {
        match &self.lm_head {
            Some(w) => layers::output_logits(w, h),
            None => layers::output_logits(&self.embed, h),
        }
    }
}
