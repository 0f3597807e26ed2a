//! Trainable parameters in Hugging Face names and shapes, and AdamW.
//!
//! [`Params`] implements [`dera_models::Weights`], so the very model code used for decoding is
//! built from leaf tensors that track gradients on an autodiff device.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Gradients;
use burn::tensor::{Device, Tensor, TensorData};
use dera_models::{ModelConfig, ModelError, Weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{LabError, Result};

struct Param {
    name: String,
    shape: Vec<usize>,
    value: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    decay: bool,
}

/// AdamW settings.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Global gradient-norm clip; `0` disables.
    pub clip: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            clip: 1.0,
        }
    }
}

/// Leaf tensors of a Llama model on an autodiff device, with AdamW state.
pub struct Params {
    device: Device,
    params: Vec<Param>,
    index: HashMap<String, usize>,
    step: usize,
}

/// Hugging Face names and shapes of a Llama model with tied embeddings.
pub fn llama_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, d],
    )];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.self_attn.q_proj.weight"), vec![qd, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kvd, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kvd, d]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, qd]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
            (format!("{p}.mlp.gate_proj.weight"), vec![ff, d]),
            (format!("{p}.mlp.up_proj.weight"), vec![ff, d]),
            (format!("{p}.mlp.down_proj.weight"), vec![d, ff]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    out
}

impl Params {
    /// Builds parameters from host values `(name, values, shape)` on `device` (made autodiff).
    pub fn from_host(values: Vec<(String, Vec<f32>, Vec<usize>)>, device: &Device) -> Self {
        let device = device.clone().autodiff();
        let inner = device.clone();
        let mut params = Vec::with_capacity(values.len());
        let mut index = HashMap::new();
        for (name, vals, shape) in values {
            let n = vals.len();
            let value = Tensor::<1>::from_data(TensorData::new(vals, [n]), &device).require_grad();
            let zeros = Tensor::<1>::zeros([n], &inner).inner();
            index.insert(name.clone(), params.len());
            params.push(Param {
                decay: shape.len() == 2,
                name,
                shape,
                value,
                m: zeros.clone(),
                v: zeros,
            });
        }
        Self {
            device,
            params,
            index,
            step: 0,
        }
    }

    /// GPT-2 style initialisation: normal(0, 0.02) matrices, output projections scaled by
    /// `1/sqrt(2 * layers)`, norms at one.
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let proj_std = 0.02 / (2.0 * cfg.num_layers as f64).sqrt();
        let values = llama_shapes(cfg)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let vals = if shape.len() == 1 {
                    vec![1.0; n]
                } else {
                    let std =
                        if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                            proj_std
                        } else {
                            0.02
                        };
                    (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
                };
                (name, vals, shape)
            })
            .collect();
        Self::from_host(values, device)
    }

    /// Reads every parameter of `cfg` from the checkpoint in `dir`.
    pub fn from_checkpoint(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let ckpt = dera_checkpoint::Checkpoint::open(dir)?;
        let mut values = Vec::new();
        for (name, shape) in llama_shapes(cfg) {
            let (vals, found) = ckpt.read_f32(&name)?;
            if found != shape {
                return Err(LabError::Other(format!(
                    "{}: {name} has shape {found:?}, expected {shape:?}",
                    dir.display()
                )));
            }
            values.push((name, vals, shape));
        }
        Ok(Self::from_host(values, device))
    }

    /// Current values on the host, `(name, values, shape)`.
    #[allow(clippy::type_complexity)]
    pub fn to_host(&self) -> Result<Vec<(String, Vec<f32>, Vec<usize>)>> {
        self.params
            .iter()
            .map(|p| {
                let vals = p
                    .value
                    .clone()
                    .inner()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| LabError::Other(format!("reading {}: {e:?}", p.name)))?;
                Ok((p.name.clone(), vals, p.shape.clone()))
            })
            .collect()
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// One AdamW step from `grads`; returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &Gradients, opt: &AdamW) -> f64 {
        self.step += 1;
        let gs: Vec<Option<Tensor<1>>> = self.params.iter().map(|p| p.value.grad(grads)).collect();
        let sq: f64 = gs
            .iter()
            .flatten()
            .map(|g| f64::from(g.clone().square().sum().into_scalar::<f32>()))
            .sum();
        let norm = sq.sqrt();
        let scale = if opt.clip > 0.0 && norm > opt.clip {
            opt.clip / norm
        } else {
            1.0
        };
        let t = self.step as i32;
        let bc1 = 1.0 - opt.beta1.powi(t);
        let bc2 = 1.0 - opt.beta2.powi(t);
        for (p, g) in self.params.iter_mut().zip(gs) {
            let Some(g) = g else { continue };
            let g = g.mul_scalar(scale);
            p.m = p.m.clone().mul_scalar(opt.beta1) + g.clone().mul_scalar(1.0 - opt.beta1);
            p.v = p.v.clone().mul_scalar(opt.beta2) + g.square().mul_scalar(1.0 - opt.beta2);
            let update = p.m.clone().div_scalar(bc1)
                / p.v.clone().div_scalar(bc2).sqrt().add_scalar(opt.eps);
            let mut w = p.value.clone().inner();
            if p.decay && opt.weight_decay > 0.0 {
                w = w.mul_scalar(1.0 - opt.lr * opt.weight_decay);
            }
            let w = w - update.mul_scalar(opt.lr);
            p.value = w.autodiff().require_grad();
        }
        norm
    }
}

impl Weights for Params {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn flat(&self, name: &str, shape: &[usize]) -> Result<Tensor<1>, ModelError> {
        let p = self
            .index
            .get(name)
            .map(|&i| &self.params[i])
            .ok_or_else(|| ModelError::Input(format!("no parameter {name}")))?;
        if p.shape != shape {
            return Err(ModelError::Input(format!(
                "parameter {name} has shape {:?}, expected {shape:?}",
                p.shape
            )));
        }
        Ok(p.value.clone())
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
