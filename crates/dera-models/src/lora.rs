//! LoRA adapters on a model: "reference + adapter" sharing the reference's weights, and one
//! forward pass over a batch whose rows use different adapters (Punica-style).
//!
//! An adapted layer computes `y = x W^T + b + scale * (x A^T) B^T` in `f32`. The base product
//! `x W^T` runs once for every row of the batch; each adapter's low-rank term is added only to
//! its own rows. Fused layers (q/k/v, gate/up) take one term per part.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use dera_kernels::{HostMatrix, WeightFormat};
use dera_lora::{Adapter, is_adapter_dir};

use crate::cache::KvCache;
use crate::config::{Architecture, ModelConfig};
use crate::layers::{LowRank, LowRankPart};
use crate::{CausalLm, LoadOptions, LoadedModel, Model, ModelError};

/// Slots of a block's dense layers that can carry an update.
pub(crate) const QKV: usize = 0;
/// The attention output projection.
pub(crate) const OUT: usize = 1;
/// gate/up (Llama) or `c_fc` (GPT-2).
pub(crate) const UP: usize = 2;
/// down (Llama) or `mlp.c_proj` (GPT-2).
pub(crate) const DOWN: usize = 3;

/// The updates of every adapted layer of one model, by block and slot.
#[derive(Debug)]
pub(crate) struct ModelLora {
    pub(crate) blocks: Vec<[LowRank; 4]>,
}

/// Which rows (of the flattened `[batch * t, hidden]` activations) an adapter applies to.
pub(crate) struct Route<'a> {
    pub(crate) lora: &'a ModelLora,
    pub(crate) rows: Vec<usize>,
}

/// The `(update, rows)` pairs of slot `slot` of block `layer`.
pub(crate) fn updates<'a>(
    routes: &'a [Route<'a>],
    layer: usize,
    slot: usize,
) -> Vec<(&'a LowRank, &'a [usize])> {
    routes
        .iter()
        .map(|r| (&r.lora.blocks[layer][slot], r.rows.as_slice()))
        .filter(|(u, _)| !u.parts.is_empty())
        .collect()
}

/// A LoRA adapter prepared for one base model's layers: cheap to clone (shared), `f32`.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    inner: Arc<ModelLora>,
    dir: std::path::PathBuf,
    modules: usize,
}

impl LoraWeights {
    /// Reads the PEFT adapter in `dir` ([`dera_lora::Adapter::open`]) for `base`.
    pub fn load(base: &Model, dir: &Path) -> Result<Self, ModelError> {
        let adapter = Adapter::open(dir)?;
        Self::from_adapter(base, &adapter)
    }

    /// Prepares `adapter` for `base`: every adapted module must be one of the base's dense
    /// layers (q/k/v/o/gate/up/down projections; GPT-2's `c_attn`, `c_proj`, `c_fc`) with
    /// matching `in`/`out` features; anything else is an error naming the module.
    pub fn from_adapter(base: &Model, adapter: &Adapter) -> Result<Self, ModelError> {
        let cfg = base.config();
        let device = base.device();
        let slots = module_slots(cfg);
        let scale = adapter.scale();
        let mut blocks: Vec<[LowRank; 4]> =
            (0..cfg.num_layers).map(|_| Default::default()).collect();
        for (module, pair) in &adapter.modules {
            let err = |reason: String| {
                ModelError::Adapter(dera_lora::LoraError::Module {
                    adapter: adapter.dir.clone(),
                    module: module.clone(),
                    reason,
                })
            };
            let Some(&(layer, slot, offset, out, inp)) = slots.get(module.as_str()) else {
                return Err(err(format!(
                    "not a layer dera adapts in this {:?} model (attention and MLP projections of model.layers.N / transformer.h.N)",
                    cfg.architecture
                )));
            };
            if (pair.out_features, pair.in_features) != (out, inp) {
                return Err(err(format!(
                    "lora_B x lora_A is [{}, {}] but the reference layer is [{out}, {inp}] (out, in)",
                    pair.out_features, pair.in_features
                )));
            }
            let dev = (*device != Device::flex()).then(|| {
                let a = Tensor::<2>::from_data(
                    TensorData::new(pair.a.clone(), [pair.rank, inp]),
                    device,
                );
                let b = Tensor::<2>::from_data(
                    TensorData::new(pair.b.clone(), [out, pair.rank]),
                    device,
                );
                (a.transpose(), b.transpose())
            });
            let host = |values: &[f32], rows: usize, cols: usize, which: &str| {
                HostMatrix::from_f32(values, rows, cols, WeightFormat::F32)
                    .map(Arc::new)
                    .map_err(|e| err(format!("{which}: {e}")))
            };
            let a = host(&pair.a, pair.rank, inp, "lora_A")?;
            let b = host(&pair.b, out, pair.rank, "lora_B")?;
            let parts = &mut blocks[layer][slot].parts;
            parts.push(LowRankPart {
                offset,
                out,
                rank: pair.rank,
                scale,
                a,
                b,
                dev,
            });
            parts.sort_by_key(|p| p.offset);
        }
        Ok(Self {
            inner: Arc::new(ModelLora { blocks }),
            dir: adapter.dir.clone(),
            modules: adapter.modules.len(),
        })
    }

    /// The adapter folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of adapted modules.
    pub fn num_modules(&self) -> usize {
        self.modules
    }

    pub(crate) fn inner(&self) -> &ModelLora {
        &self.inner
    }

    fn same(&self, other: &LoraWeights) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Module name -> (layer, slot, output offset in the fused layer, out, in).
fn module_slots(cfg: &ModelConfig) -> HashMap<String, (usize, usize, usize, usize, usize)> {
    let (d, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut m = HashMap::new();
    for i in 0..cfg.num_layers {
        let entries: Vec<(String, usize, usize, usize, usize)> = match cfg.architecture {
            Architecture::Llama | Architecture::Qwen2 => {
                let p = format!("model.layers.{i}");
                vec![
                    (format!("{p}.self_attn.q_proj"), QKV, 0, qd, d),
                    (format!("{p}.self_attn.k_proj"), QKV, qd, kvd, d),
                    (format!("{p}.self_attn.v_proj"), QKV, qd + kvd, kvd, d),
                    (format!("{p}.self_attn.o_proj"), OUT, 0, d, qd),
                    (format!("{p}.mlp.gate_proj"), UP, 0, ff, d),
                    (format!("{p}.mlp.up_proj"), UP, ff, ff, d),
                    (format!("{p}.mlp.down_proj"), DOWN, 0, d, ff),
                ]
            }
            Architecture::Gpt2 => {
                let p = format!("transformer.h.{i}");
                vec![
                    (format!("{p}.attn.c_attn"), QKV, 0, 3 * d, d),
                    (format!("{p}.attn.c_proj"), OUT, 0, d, d),
                    (format!("{p}.mlp.c_fc"), UP, 0, ff, d),
                    (format!("{p}.mlp.c_proj"), DOWN, 0, d, ff),
                ]
            }
        };
        for (name, slot, offset, out, inp) in entries {
            m.insert(name, (i, slot, offset, out, inp));
        }
    }
    m
}

impl Model {
    /// This model plus `lora`: a new model that shares every base weight with `self` (no
    /// copy) and adds the adapter's update in every forward pass. Replaces an adapter `self`
    /// already carries.
    pub fn with_adapter(&self, lora: &LoraWeights) -> Model {
        let mut m = self.clone();
        match &mut m {
            Model::Llama(l) => l.lora = Some(lora.clone()),
            Model::Gpt2(g) => g.lora = Some(lora.clone()),
        }
        m
    }

    /// The adapter this model applies, if any.
    pub fn adapter(&self) -> Option<&LoraWeights> {
        match self {
            Model::Llama(l) => l.lora.as_ref(),
            Model::Gpt2(g) => g.lora.as_ref(),
        }
    }

    /// True when `self` and `other` multiply by the very same base weight matrices (a model
    /// and "it + adapter", or two adapters over one base), so their rows can share one
    /// [`Model::forward_adapters`] pass. Known for matrices in host memory (the flex device);
    /// false otherwise.
    pub fn shares_base(&self, other: &Model) -> bool {
        let a = match self {
            Model::Llama(l) => l.host_matrix_addresses(),
            Model::Gpt2(g) => g.host_matrix_addresses(),
        };
        let b = match other {
            Model::Llama(l) => l.host_matrix_addresses(),
            Model::Gpt2(g) => g.host_matrix_addresses(),
        };
        !a.is_empty() && a == b
    }

    /// The base model without its adapter (shares the weights).
    pub fn without_adapter(&self) -> Model {
        let mut m = self.clone();
        match &mut m {
            Model::Llama(l) => l.lora = None,
            Model::Gpt2(g) => g.lora = None,
        }
        m
    }

    /// One forward pass over a batch whose rows use different adapters over the same base
    /// weights: row `i` applies `row_adapters[i]` (`None`: the base alone, whatever adapter
    /// `self` carries). Each base product runs once for all rows; each adapter's low-rank term
    /// is added to its own rows only. Same inputs and output as [`CausalLm::forward`];
    /// `cache` holds all rows, as for any batch.
    pub fn forward_adapters(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache,
        row_adapters: &[Option<&LoraWeights>],
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError> {
        let t = self.check(tokens, batch, cache)?;
        if row_adapters.len() != batch {
            return Err(ModelError::Input(format!(
                "{} row adapters given for a batch of {batch} rows",
                row_adapters.len()
            )));
        }
        let mut groups: Vec<(&LoraWeights, Vec<usize>)> = Vec::new();
        for (row, a) in row_adapters.iter().enumerate() {
            let Some(a) = a else { continue };
            let rows = (row * t..(row + 1) * t).collect::<Vec<_>>();
            match groups.iter_mut().find(|(g, _)| g.same(a)) {
                Some((_, r)) => r.extend(rows),
                None => groups.push((a, rows)),
            }
        }
        let routes: Vec<Route<'_>> = groups
            .into_iter()
            .map(|(a, rows)| Route {
                lora: a.inner(),
                rows,
            })
            .collect();
        let mut run = || self.routed_logits(tokens, batch, t, cache, &routes, all_positions);
        if rayon::current_thread_index().is_none() && *self.device() == Device::flex() {
            return rayon::scope(|_| run());
        }
        run()
    }

    /// Logits of a pass whose rows take the low-rank updates `routes` name (the fused CPU
    /// path where the model has one, else burn operations).
    pub(crate) fn routed_logits(
        &self,
        tokens: &[u32],
        batch: usize,
        t: usize,
        cache: &mut KvCache,
        routes: &[Route<'_>],
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError> {
        if let Model::Llama(m) = self
            && let Some(logits) = m.logits_fused(tokens, batch, t, cache, routes, all_positions)
        {
            return Ok(logits);
        }
        let ids: Vec<i64> = tokens.iter().map(|&x| i64::from(x)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), self.device());
        let h = match self {
            Model::Llama(m) => m.hidden_routed(ids, batch, t, cache, routes),
            Model::Gpt2(m) => m.hidden_routed(ids, batch, t, cache, routes),
        };
        let d = h.dims()[1];
        let (h, rows) = if all_positions || t == 1 {
            (h, t)
        } else {
            let last = h.reshape([batch, t, d]).narrow(1, t - 1, 1);
            (last.reshape([batch, d]), 1)
        };
        let logits = match self {
            Model::Llama(m) => m.head(h),
            Model::Gpt2(m) => m.head(h),
        };
        let v = logits.dims()[1];
        Ok(logits.reshape([batch, rows, v]))
    }
}

/// Routes for a model's own adapter over all `rows` rows.
pub(crate) fn own_routes(lora: Option<&LoraWeights>, rows: usize) -> Vec<Route<'_>> {
    lora.map(|l| Route {
        lora: l.inner(),
        rows: (0..rows).collect(),
    })
    .into_iter()
    .collect()
}

/// "Reference + adapter": the model in `reference` with the PEFT adapter in `dir` applied,
/// sharing every base weight with `reference` (the adapter's matrices are the only new
/// memory). Tokenizer and end-of-sequence ids are the reference's; `dir` names the result.
pub fn load_adapter(reference: &LoadedModel, dir: &Path) -> Result<LoadedModel, ModelError> {
    let lora = LoraWeights::load(&reference.model.without_adapter(), dir)?;
    Ok(LoadedModel {
        model: reference.model.without_adapter().with_adapter(&lora),
        tokenizer: reference.tokenizer.clone(),
        eos_token_ids: reference.eos_token_ids.clone(),
        dir: dir.to_path_buf(),
    })
}

/// An aligned model for `reference`: `path` is either a full checkpoint (loaded with
/// `options` on `device`, as [`crate::load_with`]) or a PEFT adapter folder (one that holds
/// `adapter_config.json`), applied to the reference's weights ([`load_adapter`]).
pub fn load_aligned(
    reference: &LoadedModel,
    path: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    if is_adapter_dir(path) {
        load_adapter(reference, path)
    } else {
        crate::load_with(path, device, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Reference + adapter" holds the very same base matrices as the reference.
    #[test]
    fn adapted_models_share_the_base_weights() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let reference = crate::load(&root.join("golden/models/llama"), &Device::flex()).unwrap();
        let adapted =
            load_adapter(&reference, &root.join("lora/adapters/llama_all_r8_rslora")).unwrap();
        let (Model::Llama(a), Model::Llama(b)) = (&reference.model, &adapted.model) else {
            panic!("llama fixtures");
        };
        let (pa, pb) = (a.host_matrix_addresses(), b.host_matrix_addresses());
        assert!(pa.len() > 8);
        assert_eq!(pa, pb);
        assert!(a.lora.is_none() && b.lora.is_some());
        assert!(reference.model.shares_base(&adapted.model));
        let again = crate::load(&root.join("golden/models/llama"), &Device::flex()).unwrap();
        assert!(!again.model.shares_base(&reference.model));
    }
}
