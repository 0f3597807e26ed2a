//! GPT-2: learned positions, pre-LayerNorm blocks, gelu_new MLP, Conv1D (`[in, out]`) weights.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::ModelError;
use crate::cache::KvCache;
use crate::config::{Activation, ModelConfig};
use crate::layers::{
    self, Dense, Linear, attention, attention_bias, extend_cache, gelu_erf, gelu_new, layer_norm,
    merge_heads, split_heads,
};
use crate::lora::{self, DOWN, LoraWeights, OUT, QKV, Route, UP};
use crate::weights::{Weights, dense_conv1d, embedding};

#[derive(Debug, Clone)]
struct Block {
    ln1: (Tensor<1>, Tensor<1>),
    qkv: Linear,
    proj: Linear,
    ln2: (Tensor<1>, Tensor<1>),
    fc: Linear,
    fc_proj: Linear,
}

/// A GPT-2 decoder with its tied output head.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    cfg: ModelConfig,
    device: Device,
    wte: Dense,
    wpe: Tensor<2>,
    blocks: Vec<Block>,
    ln_f: (Tensor<1>, Tensor<1>),
    /// A LoRA adapter applied to every row ([`crate::Model::with_adapter`]).
    pub(crate) lora: Option<LoraWeights>,
}

impl Gpt2 {
    /// Addresses of the host weight matrices (flex), to check that models share them.
    pub(crate) fn host_matrix_addresses(&self) -> Vec<usize> {
        let mut v = self.wte.host_addresses();
        for b in &self.blocks {
            for l in [&b.qkv, &b.proj, &b.fc, &b.fc_proj] {
                v.extend(l.weight.host_addresses());
            }
        }
        v
    }
}

impl Gpt2 {
    /// Builds the model from Hugging Face-named weights (with or without the `transformer.` prefix).
    pub fn new(cfg: &ModelConfig, w: &dyn Weights) -> Result<Self, ModelError> {
        let d = cfg.hidden_size;
        let prefix = if w.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let conv = |name: &str, inp: usize, out: usize| -> Result<Linear, ModelError> {
            Ok(Linear {
                weight: dense_conv1d(w, &format!("{prefix}{name}.weight"), inp, out)?,
                bias: Some(w.vector(&format!("{prefix}{name}.bias"), out)?),
            })
        };
        let norm = |name: &str| -> Result<(Tensor<1>, Tensor<1>), ModelError> {
            Ok((
                w.vector(&format!("{prefix}{name}.weight"), d)?,
                w.vector(&format!("{prefix}{name}.bias"), d)?,
            ))
        };
        let wte = embedding(w, &format!("{prefix}wte.weight"), cfg.vocab_size, d)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            blocks.push(Block {
                ln1: norm(&format!("h.{i}.ln_1"))?,
                qkv: conv(&format!("h.{i}.attn.c_attn"), d, 3 * d)?,
                proj: conv(&format!("h.{i}.attn.c_proj"), d, d)?,
                ln2: norm(&format!("h.{i}.ln_2"))?,
                fc: conv(&format!("h.{i}.mlp.c_fc"), d, cfg.intermediate_size)?,
                fc_proj: conv(&format!("h.{i}.mlp.c_proj"), cfg.intermediate_size, d)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            device: w.device().clone(),
            wte,
            wpe: w.matrix(
                &format!("{prefix}wpe.weight"),
                cfg.max_position_embeddings,
                d,
            )?,
            blocks,
            ln_f: norm("ln_f")?,
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
    /// final norm, with LoRA updates applied to the rows each route names.
    pub(crate) fn hidden_routed(
        &self,
        tokens: Tensor<1, Int>,
        b: usize,
        t: usize,
        cache: &mut KvCache,
        routes: &[Route<'_>],
    ) -> Tensor<2> {
        let cfg = &self.cfg;
        let (d, nh, hd) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim);
        let pos: Vec<i64> = layers::positions(cache, b, t)
            .into_iter()
            .flatten()
            .map(|p| p as i64)
            .collect();
        let pos = Tensor::<1, Int>::from_data(TensorData::new(pos, [b * t]), &self.device);
        let mut x = self.wte.rows(tokens, &self.device) + self.wpe.clone().select(0, pos);
        let bias = attention_bias(cache, b, t, &self.device);
        let base_scale = if cfg.scale_attn_weights {
            1.0 / (hd as f64).sqrt()
        } else {
            1.0
        };
        let eps = cfg.norm_eps;
        for (i, blk) in self.blocks.iter().enumerate() {
            let scale = if cfg.scale_attn_by_inverse_layer_idx {
                base_scale / (i + 1) as f64
            } else {
                base_scale
            };
            let h = layer_norm(x.clone(), &blk.ln1.0, &blk.ln1.1, eps);
            let qkv = blk.qkv.forward_lora(h, &lora::updates(routes, i, QKV));
            let q = split_heads(qkv.clone().narrow(1, 0, d), b, t, nh, hd);
            let k = split_heads(qkv.clone().narrow(1, d, d), b, t, nh, hd);
            let v = split_heads(qkv.narrow(1, 2 * d, d), b, t, nh, hd);
            let (k, v) = extend_cache(cache, i, k, v);
            let a = attention(q, k, v, bias.as_ref(), scale);
            x = x + blk
                .proj
                .forward_lora(merge_heads(a), &lora::updates(routes, i, OUT));
            let h = layer_norm(x.clone(), &blk.ln2.0, &blk.ln2.1, eps);
            let a = blk.fc.forward_lora(h, &lora::updates(routes, i, UP));
            let a = match cfg.activation {
                Activation::GeluErf => gelu_erf(a),
                _ => gelu_new(a),
            };
            x = x + blk.fc_proj.forward_lora(a, &lora::updates(routes, i, DOWN));
        }
        cache.len += t;
        layer_norm(x, &self.ln_f.0, &self.ln_f.1, eps)
    }

    pub(crate) fn head(&self, h: Tensor<2>) -> Tensor<2> {
        layers::output_logits(&self.wte, h)
    }
}
