//! The Llama family (Llama 2/3, Mistral, SmolLM2) and Qwen2, which adds q/k/v biases.

use std::sync::Arc;

use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use dera_kernels::HostMatrix;

use crate::ModelError;
use crate::cache::{KvCache, LayerKv};
use crate::config::{Architecture, ModelConfig};
use crate::host::{self, HostKv};
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
    /// The fused CPU path's view of the weights, when every matrix is a host matrix on the
    /// flex device (`None`: burn operations).
    pub(crate) fused: Option<Arc<Fused>>,
}

/// Everything the fused CPU path ([`crate::host`]) reads: the host matrices (shared with the
/// layers, no copy) and the norms and biases as host vectors.
#[derive(Debug)]
pub(crate) struct Fused {
    embed: Arc<HostMatrix>,
    head: Vec<Arc<HostMatrix>>,
    norm: Vec<f32>,
    blocks: Vec<FusedBlock>,
}

/// A dense layer's host matrices (stacked by rows) and its bias.
type HostLinear = (Vec<Arc<HostMatrix>>, Option<Vec<f32>>);

#[derive(Debug)]
struct FusedBlock {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// qkv, o, gate_up, down (the [`lora`] slots): matrices and optional bias.
    linears: [HostLinear; 4],
}

fn host_vector(t: &Tensor<1>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

impl Fused {
    /// The fused view of `m`, if every matrix is on the host and the device is flex.
    fn of(m: &Llama) -> Option<Self> {
        if m.device != Device::flex() {
            return None;
        }
        let part = |l: &Linear| -> Option<HostLinear> {
            Some((
                l.weight.host_parts()?.to_vec(),
                l.bias.as_ref().map(host_vector),
            ))
        };
        let mut blocks = Vec::with_capacity(m.blocks.len());
        for b in &m.blocks {
            blocks.push(FusedBlock {
                input_norm: host_vector(&b.input_norm),
                post_norm: host_vector(&b.post_norm),
                linears: [
                    part(&b.qkv)?,
                    part(&b.o)?,
                    part(&b.gate_up)?,
                    part(&b.down)?,
                ],
            });
        }
        let embed = m.embed.host_parts()?.first()?.clone();
        let head = match &m.lm_head {
            Some(h) => h.host_parts()?.to_vec(),
            None => vec![embed.clone()],
        };
        Some(Self {
            embed,
            head,
            norm: host_vector(&m.norm),
            blocks,
        })
    }
}

/// `x W^T` (stacked parts) plus each update on its rows, plus the bias, for host activations
/// `[m, in]`.
fn host_linear(
    (parts, bias): &HostLinear,
    xs: &[f32],
    m: usize,
    updates: &[(&layers::LowRank, &[usize])],
) -> Vec<f32> {
    let mut y = layers::host_product(parts, xs, m);
    let (n, k) = (y.len() / m.max(1), xs.len() / m.max(1));
    for (u, rows) in updates {
        u.add_rows_host(xs, k, rows, &mut y, n);
    }
    if let Some(b) = bias {
        host::add_bias(&mut y, b);
    }
    y
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
        let mut m = Self {
            cfg: cfg.clone(),
            device: w.device().clone(),
            embed,
            blocks,
            norm: w.vector("model.norm.weight", d)?,
            lm_head,
            rope: Rope::new(cfg),
            lora: None,
            fused: None,
        };
        m.fused = Fused::of(&m).map(Arc::new);
        Ok(m)
    }

    /// Logits `[b, rows, vocab]` by the fused CPU path (`None` when the model cannot take it):
    /// the same computation as [`Self::hidden_routed`] + [`Self::head`] over host buffers, the
    /// cache appended in place.
    pub(crate) fn logits_fused(
        &self,
        tokens: &[u32],
        b: usize,
        t: usize,
        cache: &mut KvCache,
        routes: &[Route<'_>],
        all_positions: bool,
    ) -> Option<Tensor<3>> {
        let f = self.fused.as_ref()?;
        let cfg = &self.cfg;
        let (d, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
        );
        let (qd, kvd, m) = (nh * hd, nkv * hd, b * t);
        let eps = cfg.norm_eps as f32;
        let ids: Vec<usize> = tokens.iter().map(|&x| x as usize).collect();
        // Ids were checked against the vocabulary by the caller.
        let mut x = f.embed.gather_f32(&ids).ok()?;
        let past = cache.len;
        let pads: Vec<usize> = (0..b).map(|r| cache.pad_of(r)).collect();
        let half = hd / 2;
        let (cos, sin) = host::rope_tables(&self.rope.inv_freq, half, past, t, &pads);
        let scale = 1.0 / (hd as f32).sqrt();
        let limit = cfg.max_position_embeddings.max(past + t);
        for (i, blk) in f.blocks.iter().enumerate() {
            let h = host::rms_norm(&x, d, &blk.input_norm, eps);
            let mut qkv = host_linear(&blk.linears[QKV], &h, m, &lora::updates(routes, i, QKV));
            let width = qkv.len() / m;
            host::rope_in_place(&mut qkv, width, 0, nh, (&cos, &sin), half);
            host::rope_in_place(&mut qkv, width, qd, nkv, (&cos, &sin), half);
            let slot = &mut cache.layers[i];
            let mut kv = match slot.take() {
                Some(l) => l.into_host(),
                None => HostKv::new(b, nkv, hd),
            };
            kv.reserve(t, limit);
            kv.write(&qkv, width, qd, qd + kvd, t);
            let a = host::attention(&qkv, width, t, nh, &kv, &pads, scale);
            *slot = Some(LayerKv::Host(kv));
            let o = host_linear(&blk.linears[OUT], &a, m, &lora::updates(routes, i, OUT));
            host::add_in_place(&mut x, &o);
            let h = host::rms_norm(&x, d, &blk.post_norm, eps);
            let gu = host_linear(&blk.linears[UP], &h, m, &lora::updates(routes, i, UP));
            let act = host::silu_mul(&gu, m, gu.len() / m / 2);
            let dn = host_linear(&blk.linears[DOWN], &act, m, &lora::updates(routes, i, DOWN));
            host::add_in_place(&mut x, &dn);
        }
        cache.len += t;
        let (x, rows) = if all_positions || t == 1 {
            (x, t)
        } else {
            let last: Vec<f32> = (0..b)
                .flat_map(|r| x[((r + 1) * t - 1) * d..(r + 1) * t * d].iter().copied())
                .collect();
            (last, 1)
        };
        let h = host::rms_norm(&x, d, &f.norm, eps);
        let logits = layers::host_product(&f.head, &h, b * rows);
        let v = logits.len() / (b * rows).max(1);
        Some(Tensor::from_data(
            TensorData::new(logits, [b, rows, v]),
            &self.device,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Shape, prompt, random_adapter, random_model_with};
    use crate::{CausalLm, LoadOptions, LoraWeights, Model, WeightDtype};

    const SHAPE: Shape = Shape {
        vocab: 96,
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        intermediate: 40,
    };

    /// The model as loaded (fused CPU path) and the same weights through burn operations.
    fn pair(dtype: WeightDtype) -> (Model, Model) {
        let options = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let fused = random_model_with(&SHAPE, 5, &Device::flex(), &options)
            .unwrap()
            .model;
        let mut burn_ops = fused.clone();
        match &mut burn_ops {
            Model::Llama(l) => {
                assert!(
                    l.fused.is_some(),
                    "host matrices on flex take the fused path"
                );
                l.fused = None;
            }
            Model::Gpt2(_) => unreachable!(),
        }
        (fused, burn_ops)
    }

    fn values(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 2e-5,
            "{what}: fused and burn paths differ by {worst}"
        );
    }

    /// Prefill of a left-padded batch (all positions), decode steps, a row dropped, a row
    /// joined and the shared padding trimmed: the fused path computes what the burn operations
    /// compute, with and without an adapter, in f32 and bf16.
    #[test]
    fn the_fused_path_equals_the_burn_operations() {
        for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
            let (fused, ops) = pair(dtype);
            let adapter = random_adapter(&SHAPE, 4, 9).unwrap();
            let lora = LoraWeights::from_adapter(&fused, &adapter).unwrap();
            let cases = [
                (fused.clone(), ops.clone()),
                (fused.with_adapter(&lora), ops.with_adapter(&lora)),
            ];
            for (ci, (f, o)) in cases.iter().enumerate() {
                let what = format!("{dtype:?} case {ci}");
                let p = prompt(6, SHAPE.vocab);
                // Row 0: 6 tokens; row 1: 4 tokens after 2 padding positions.
                let mut tokens = p.clone();
                tokens.extend([0, 0]);
                tokens.extend(&p[..4]);
                let (mut cf, mut co) = (
                    KvCache::with_padding(SHAPE.layers, vec![0, 2]),
                    KvCache::with_padding(SHAPE.layers, vec![0, 2]),
                );
                let a = f.forward(&tokens, 2, &mut cf, true).unwrap();
                let b = o.forward(&tokens, 2, &mut co, true).unwrap();
                // Logits of padding positions are never used.
                let (va, vb) = (values(a), values(b));
                close(&va[..6 * SHAPE.vocab], &vb[..6 * SHAPE.vocab], &what);
                close(&va[8 * SHAPE.vocab..], &vb[8 * SHAPE.vocab..], &what);
                for step in 0..3u32 {
                    let next = [3 + step, 7 + step];
                    let a = f.forward(&next, 2, &mut cf, false).unwrap();
                    let b = o.forward(&next, 2, &mut co, false).unwrap();
                    close(&values(a), &values(b), &what);
                }
                // Drop row 0, join a fresh 3-token row, trim, decode on.
                let join = |m: &Model| {
                    let mut c = KvCache::with_padding(SHAPE.layers, vec![0]);
                    m.forward(&p[1..4], 1, &mut c, false).unwrap();
                    c
                };
                let mut cf = cf.select_rows(&[1]).concat(join(f)).unwrap().trim();
                let mut co = co.select_rows(&[1]).concat(join(o)).unwrap().trim();
                // The host cache trims lazily (only once the shared padding is half of it):
                // the same rows, the padding shifted by the untrimmed positions.
                let shift = cf.len() - co.len();
                let shifted: Vec<usize> = co.padding().iter().map(|p| p + shift).collect();
                assert_eq!(cf.padding(), shifted.as_slice());
                for step in 0..2u32 {
                    let next = [11 + step, 13 + step];
                    let a = f.forward(&next, 2, &mut cf, false).unwrap();
                    let b = o.forward(&next, 2, &mut co, false).unwrap();
                    close(&values(a), &values(b), &what);
                }
                let (kf, _) = cf.layer(1).unwrap();
                let (ko, _) = co.layer(1).unwrap();
                assert_eq!(kf.dims()[0], ko.dims()[0]);
                assert_eq!(kf.dims()[2], cf.len());
            }
        }
    }

    /// A row decoded alone and the same row in a left-padded batch give the same bits.
    #[test]
    fn a_row_alone_equals_the_row_in_a_padded_batch_bit_for_bit() {
        let (f, _) = pair(WeightDtype::F32);
        let p = prompt(5, SHAPE.vocab);
        let mut alone = f.new_cache();
        let a = values(f.forward(&p[..3], 1, &mut alone, false).unwrap());
        let mut tokens = p.clone();
        tokens.extend([0, 0]);
        tokens.extend(&p[..3]);
        let mut batch = KvCache::with_padding(SHAPE.layers, vec![0, 2]);
        let b = values(f.forward(&tokens, 2, &mut batch, false).unwrap());
        assert_eq!(a, b[SHAPE.vocab..]);
        for s in 0..3u32 {
            let a = values(f.forward(&[5 + s], 1, &mut alone, false).unwrap());
            let b = values(f.forward(&[9, 5 + s], 2, &mut batch, false).unwrap());
            assert_eq!(a, b[SHAPE.vocab..], "step {s}");
        }
    }
}
