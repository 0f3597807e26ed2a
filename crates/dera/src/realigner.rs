//! The reference and aligned models, loaded together.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dera_mix::{Mixture, Term, VocabPolicy, logit_width, mix_logits};
use dera_models::burn::tensor::{Device, Tensor};
use dera_models::{
    CausalLm, KvCache, LoadOptions, LoadedModel, LoraWeights, Model, ModelConfig, Tokenizer,
};

use crate::prompts::{PROMPT_CACHE_BYTES, PromptCache, PromptCacheStats};
use crate::{ChatTemplate, DeraError};

/// A model the engine mixes: any [`CausalLm`], shared between threads.
pub type SharedModel = Arc<dyn CausalLm + Send + Sync>;

/// Weight-matrix parameters (all models together) up to which the weights stay in a CPU's
/// cache: 8M, 32 MB in f32.
pub const CACHED_PARAMS: usize = 8 << 20;

/// `options`, with [`LoadOptions::panels`] set when the matrices of the reference and every
/// full aligned checkpoint (adapters multiply by the reference's) come to at most
/// [`CACHED_PARAMS`] parameters. A config that cannot be read leaves the options as they are
/// (loading then reports it).
fn in_cache_options(reference: &Path, aligned: &[PathBuf], options: &LoadOptions) -> LoadOptions {
    let mut o = *options;
    let mut total = 0usize;
    for dir in std::iter::once(reference).chain(aligned.iter().map(PathBuf::as_path)) {
        if dir != reference && dera_models::is_adapter_dir(dir) {
            continue;
        }
        match ModelConfig::from_dir(dir) {
            Ok(c) => total = total.saturating_add(c.matrix_params()),
            Err(_) => return o,
        }
    }
    o.panels |= total <= CACHED_PARAMS;
    o
}

/// Models of the mixture that multiply by the same base weights and differ only by LoRA
/// adapters (the reference and "reference + adapter" models): the engine runs their rows as
/// one batch of one pass over the base ([`Model::forward_adapters`]).
#[derive(Debug, Clone)]
pub(crate) struct AdapterGroup {
    /// The base, without an adapter.
    base: Model,
    /// Model indices (reference = 0), increasing.
    pub(crate) members: Vec<usize>,
    /// Each member's adapter (`None`: the base alone).
    adapters: Vec<Option<LoraWeights>>,
}

/// The forward passes of one step: which models each runs (one, or an [`AdapterGroup`]).
#[derive(Debug, Clone)]
pub(crate) struct PassPlan {
    /// The adapter group the pass runs, if any.
    pub(crate) group: Option<usize>,
    /// Model indices the pass runs, increasing.
    pub(crate) members: Vec<usize>,
}

/// A reference model and K aligned models that decode in lockstep.
///
/// Models that share one base's weights (the reference and PEFT adapters over it, loaded by
/// [`Realigner::load`] or given to [`Realigner::from_models`]) run as one pass per step: the
/// reference's rows and each adapter's rows are one batch over the base weights, each
/// adapter's low-rank update added to its own rows only ([`Realigner::set_shared_base`]).
///
/// The models are held through the [`CausalLm`] trait, so a model written outside dera mixes
/// with loaded ones ([`Realigner::from_parts`]); the reference's tokenizer and EOS ids serve
/// the whole mixture.
pub struct Realigner {
    pub(crate) models: Vec<SharedModel>,
    names: Vec<String>,
    tokenizer: Option<Tokenizer>,
    eos_token_ids: Vec<u32>,
    reference_dir: Option<PathBuf>,
    pub(crate) width: usize,
    pub(crate) device: Device,
    load_ms: f64,
    groups: Vec<AdapterGroup>,
    shared_base: bool,
    weight_params: Option<usize>,
    prompts: PromptCache,
}

impl fmt::Debug for Realigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Realigner")
            .field("models", &self.names)
            .field("width", &self.width)
            .field("device", &self.device)
            .field("adapter_groups", &self.adapter_groups())
            .finish_non_exhaustive()
    }
}

impl Realigner {
    /// Loads the reference and aligned checkpoints onto `device`. Logit widths must agree
    /// unless `policy` allows truncating to the reference tokenizer's vocabulary.
    pub fn load(
        reference: &Path,
        aligned: &[PathBuf],
        device: &Device,
        policy: VocabPolicy,
    ) -> Result<Self, DeraError> {
        Self::load_with(reference, aligned, device, policy, &LoadOptions::default())
    }

    /// [`Self::load`] with the weights' in-memory format (`--dtype`, `--quantize`). A mixture
    /// whose weight matrices stay in cache (at most [`CACHED_PARAMS`] parameters) also holds
    /// its float matrices in panels of 16 rows, in their stored format
    /// ([`LoadOptions::panels`]: faster compute-bound products, the same guarantees).
    pub fn load_with(
        reference: &Path,
        aligned: &[PathBuf],
        device: &Device,
        policy: VocabPolicy,
        options: &LoadOptions,
    ) -> Result<Self, DeraError> {
        let start = Instant::now();
        let options = &in_cache_options(reference, aligned, options);
        let mut models = vec![dera_models::load_with(reference, device, options)?];
        let mut on_reference = vec![false];
        for dir in aligned {
            // A full checkpoint, or a PEFT adapter folder applied to the reference's weights.
            let model = dera_models::load_aligned(&models[0], dir, device, options)?;
            on_reference.push(dera_models::is_adapter_dir(dir));
            models.push(model);
        }
        let mut r = Self::from_loaded(models, &on_reference, policy)?;
        r.load_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(r)
    }

    /// The options [`Self::load_with`] loads `reference` and `aligned` with: `options`, plus
    /// [`LoadOptions::panels`] when the mixture's weight matrices stay in cache (at most
    /// [`CACHED_PARAMS`] parameters, read from the configs). Load models with these to give
    /// [`Self::from_models`] the same products.
    pub fn load_options(
        reference: &Path,
        aligned: &[PathBuf],
        options: &LoadOptions,
    ) -> LoadOptions {
        in_cache_options(reference, aligned, options)
    }

    /// Combines already loaded models: the first is the reference. Models that share one
    /// base's weight matrices ([`Model::shares_base`]: the reference and
    /// [`dera_models::load_adapter`] models over it) form an adapter group that runs as one
    /// pass. The models keep the options they were loaded with: for small mixtures, load them
    /// with [`Self::load_options`] (panels) to multiply as [`Self::load_with`] does.
    pub fn from_models(models: Vec<LoadedModel>, policy: VocabPolicy) -> Result<Self, DeraError> {
        Self::from_loaded(models, &[], policy)
    }

    /// [`Self::from_models`]; `on_reference[j]` says model `j` is known to be the reference's
    /// base plus an adapter (where [`Model::shares_base`] cannot tell: device tensors).
    fn from_loaded(
        models: Vec<LoadedModel>,
        on_reference: &[bool],
        policy: VocabPolicy,
    ) -> Result<Self, DeraError> {
        let groups = adapter_groups(
            &models.iter().map(|m| &m.model).collect::<Vec<_>>(),
            on_reference,
        );
        // Each base once: an adapter group's members after the first share its matrices.
        let weight_params = models
            .iter()
            .enumerate()
            .filter(|(j, _)| !groups.iter().any(|g| g.members[1..].contains(j)))
            .map(|(_, m)| m.model.config().matrix_params())
            .fold(0usize, usize::saturating_add);
        let mut models = models.into_iter();
        let first = models
            .next()
            .ok_or_else(|| DeraError::Request("no models".into()))?;
        let dir = first.dir.clone();
        let (tokenizer, eos) = (first.tokenizer, first.eos_token_ids);
        let parts = std::iter::once((dir.display().to_string(), Arc::new(first.model) as _))
            .chain(models.map(|m| (m.dir.display().to_string(), Arc::new(m.model) as _)))
            .collect();
        let mut r = Self::from_parts(parts, tokenizer, eos, policy)?;
        r.reference_dir = Some(dir);
        r.groups = groups;
        r.weight_params = Some(weight_params);
        Ok(r)
    }

    /// Combines models of any kind, each with a name for messages; the first is the
    /// reference, whose `tokenizer` and `eos_token_ids` the mixture uses. Every model must
    /// live on the reference's device.
    pub fn from_parts(
        models: Vec<(String, SharedModel)>,
        tokenizer: Option<Tokenizer>,
        eos_token_ids: Vec<u32>,
        policy: VocabPolicy,
    ) -> Result<Self, DeraError> {
        let (names, models): (Vec<String>, Vec<SharedModel>) = models.into_iter().unzip();
        let first = models
            .first()
            .ok_or_else(|| DeraError::Request("no models".into()))?;
        let device = first.device().clone();
        if let Some(i) = models.iter().position(|m| *m.device() != device) {
            return Err(DeraError::Request(format!(
                "model {} is on {:?}, the reference on {device:?}: load every model on one device",
                names[i],
                models[i].device()
            )));
        }
        let widths: Vec<usize> = models.iter().map(|m| m.vocab_size()).collect();
        let tok = tokenizer.as_ref().map(Tokenizer::vocab_size);
        let width = match policy {
            VocabPolicy::Strict => logit_width(&widths, None, policy)?,
            VocabPolicy::TruncateToTokenizer => logit_width(&widths, tok, policy)?,
        };
        Ok(Self {
            models,
            names,
            tokenizer,
            eos_token_ids,
            reference_dir: None,
            width,
            device,
            load_ms: 0.0,
            groups: Vec::new(),
            shared_base: true,
            weight_params: None,
            prompts: PromptCache::new(PROMPT_CACHE_BYTES),
        })
    }

    /// Parameters of the weight matrices a step reads (each shared base once), counted from
    /// the loaded models' configs; `None` for models given through [`Self::from_parts`].
    pub fn weight_params(&self) -> Option<usize> {
        self.weight_params
    }

    /// Whether the weights are small enough to stay in a CPU's cache (at most
    /// [`CACHED_PARAMS`] parameters): a decoding step is then compute-bound, and passes or
    /// batches do best side by side, each on its own core.
    pub fn fits_in_cache(&self) -> bool {
        self.weight_params.is_some_and(|p| p <= CACHED_PARAMS)
    }

    /// Runs models that share one base as one pass (`true`, the default) or each model as a
    /// pass of its own (`false`: the same numbers to rounding, about one base pass more per
    /// adapter; for comparisons).
    pub fn set_shared_base(&mut self, on: bool) {
        self.shared_base = on;
        // Kept prompts were prefilled by the other kind of pass (equal only to rounding).
        self.prompts.clear();
    }

    /// Keeps at most `bytes` of prefilled prompts for later requests (default
    /// [`crate::PROMPT_CACHE_BYTES`]; 0 keeps none). Each model's keys, values and next-token
    /// logits after a prompt are kept, whatever the lambda of the request that prefilled
    /// them: a later sequence with the same prompt joins those rows instead of running it
    /// again, and one whose prompt continues a kept one (the next turn of a chat) or shares
    /// its first tokens with one (a system prompt) runs only the rest from them; the same
    /// bits either way. Least recently used rows go first.
    pub fn set_prompt_cache_bytes(&self, bytes: usize) {
        self.prompts.set_budget(bytes);
    }

    /// Hits, misses and contents of the prompt cache ([`Self::set_prompt_cache_bytes`]).
    pub fn prompt_cache_stats(&self) -> PromptCacheStats {
        self.prompts.stats()
    }

    pub(crate) fn prompt_cache(&self) -> &PromptCache {
        &self.prompts
    }

    /// Whether adapter groups run as one pass ([`Realigner::set_shared_base`]).
    pub fn shared_base(&self) -> bool {
        self.shared_base
    }

    /// The model indices (reference = 0) of every group of models that share one base and
    /// run as one pass per step; empty when no two models share a base.
    pub fn adapter_groups(&self) -> Vec<Vec<usize>> {
        self.groups.iter().map(|g| g.members.clone()).collect()
    }

    /// The forward passes of a step: the adapter groups (when shared-base passes are on),
    /// then every other model alone.
    pub(crate) fn pass_plans(&self) -> Vec<PassPlan> {
        let groups: &[AdapterGroup] = if self.shared_base { &self.groups } else { &[] };
        let mut plans: Vec<PassPlan> = groups
            .iter()
            .enumerate()
            .map(|(g, group)| PassPlan {
                group: Some(g),
                members: group.members.clone(),
            })
            .collect();
        for j in 0..self.models.len() {
            if !groups.iter().any(|g| g.members.contains(&j)) {
                plans.push(PassPlan {
                    group: None,
                    members: vec![j],
                });
            }
        }
        plans
    }

    /// One forward pass of `plan` over `row_models.len()` rows, row `i` run by model
    /// `row_models[i]` (a member of the plan); as [`CausalLm::forward`] otherwise.
    pub(crate) fn forward_pass(
        &self,
        plan: &PassPlan,
        row_models: &[usize],
        tokens: &[u32],
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor<3>, DeraError> {
        let batch = row_models.len();
        match plan.group.and_then(|g| self.groups.get(g)) {
            Some(group) => {
                let adapters: Vec<Option<&LoraWeights>> = row_models
                    .iter()
                    .map(|j| {
                        group
                            .members
                            .iter()
                            .position(|m| m == j)
                            .and_then(|k| group.adapters[k].as_ref())
                    })
                    .collect();
                Ok(group
                    .base
                    .forward_adapters(tokens, batch, cache, &adapters, all_positions)?)
            }
            None => {
                let j = row_models.first().copied().unwrap_or(plan.members[0]);
                Ok(self.models[j].forward(tokens, batch, cache, all_positions)?)
            }
        }
    }

    /// Runs each model of `active` on one sequence `tokens` (adapter groups as one pass of
    /// one row per member): logits `[t or 1, V_j]` per model, in `active`'s order.
    pub(crate) fn forward_each(
        &self,
        active: &[usize],
        tokens: &[u32],
        all_positions: bool,
    ) -> Result<Vec<Tensor<2>>, DeraError> {
        let mut out: Vec<Option<Tensor<2>>> = vec![None; active.len()];
        for plan in self.pass_plans() {
            let rows: Vec<usize> = active
                .iter()
                .copied()
                .filter(|j| plan.members.contains(j))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut cache = self.models[rows[0]].new_cache();
            let all: Vec<u32> = rows.iter().flat_map(|_| tokens.iter().copied()).collect();
            let logits = self.forward_pass(&plan, &rows, &all, &mut cache, all_positions)?;
            let [b, t, v] = logits.dims();
            let logits = logits.reshape([b * t, v]);
            for (k, j) in rows.iter().enumerate() {
                if let Some(slot) = active.iter().position(|a| a == j) {
                    out[slot] = Some(logits.clone().narrow(0, k * t, t));
                }
            }
        }
        out.into_iter()
            .map(|x| x.ok_or_else(|| DeraError::Request("a model did not run".into())))
            .collect()
    }

    /// All models, reference first.
    pub fn models(&self) -> &[SharedModel] {
        &self.models
    }

    /// The models' names (checkpoint directories for loaded ones), reference first.
    pub fn model_names(&self) -> &[String] {
        &self.names
    }

    /// The reference's checkpoint directory, when it was loaded from one.
    pub fn reference_dir(&self) -> Option<&Path> {
        self.reference_dir.as_deref()
    }

    /// Names `dir` as the reference's checkpoint directory (its chat template), for a
    /// mixture built with [`Realigner::from_parts`].
    pub fn set_reference_dir(&mut self, dir: &Path) {
        self.reference_dir = Some(dir.to_path_buf());
    }

    /// The reference's chat template (`tokenizer_config.json` of its directory).
    pub fn chat_template(&self) -> Result<ChatTemplate, DeraError> {
        let dir = self.reference_dir().ok_or_else(|| {
            DeraError::Chat("the reference was not loaded from a checkpoint directory".into())
        })?;
        ChatTemplate::from_dir(dir)
    }

    /// Number of aligned models K.
    pub fn num_aligned(&self) -> usize {
        self.models.len() - 1
    }

    /// Width of the mixed logits.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The device everything runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Milliseconds [`Realigner::load`] took.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// The reference tokenizer.
    pub fn tokenizer(&self) -> Result<&Tokenizer, DeraError> {
        self.tokenizer.as_ref().ok_or_else(|| {
            let name = self.names.first().map_or("the reference", String::as_str);
            DeraError::Model(dera_models::ModelError::Tokenizer {
                path: Path::new(name).join(dera_checkpoint::TOKENIZER_FILE),
                reason: "file not found".into(),
            })
        })
    }

    /// The reference tokenizer, when there is one.
    pub(crate) fn tokenizer_opt(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// End-of-sequence ids of the reference.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub(crate) fn check_mixture(&self, mixture: &Mixture) -> Result<(), DeraError> {
        if mixture.num_aligned() != self.num_aligned() {
            return Err(DeraError::Request(format!(
                "{} lambda value(s) given for {} aligned model(s); give one per aligned model, in order",
                mixture.num_aligned(),
                self.num_aligned()
            )));
        }
        Ok(())
    }

    /// The context every model can attend over (the smallest [`CausalLm::max_positions`]),
    /// and the name of the model that sets it.
    pub fn context_len(&self) -> (usize, &str) {
        self.models
            .iter()
            .zip(&self.names)
            .map(|(m, name)| (m.max_positions(), name.as_str()))
            .min_by_key(|&(n, _)| n)
            .unwrap_or((usize::MAX, ""))
    }

    /// `prompt + new` positions must fit [`Realigner::context_len`].
    pub(crate) fn check_context(
        &self,
        at: &str,
        prompt: usize,
        new: usize,
    ) -> Result<(), DeraError> {
        let (context, name) = self.context_len();
        let total = prompt.saturating_add(new);
        if total > context {
            return Err(DeraError::Context {
                at: at.to_string(),
                prompt,
                new,
                total,
                context,
                model: name.to_string(),
            });
        }
        Ok(())
    }

    /// Mixes one logits tensor per model in `active` (each `[B, V_j]`, every row run by every
    /// one of them) with per-row mixtures into `[B, width]` on the device.
    pub(crate) fn mix_all(
        &self,
        logits: Vec<Tensor<2>>,
        active: &[usize],
        mixtures: &[&Mixture],
    ) -> Tensor<2> {
        let b = mixtures.len();
        let coefs: Vec<Vec<f32>> = mixtures.iter().map(|m| m.coefficients_f32()).collect();
        let terms = logits.into_iter().zip(active).map(|(h, &j)| Term {
            logits: h,
            rows: (0..b).collect(),
            coefficients: coefs.iter().map(|c| c[j]).collect(),
        });
        mix_logits(terms, b, self.width, &self.device)
    }
}

/// Groups of at least two models with one base: model `j` joins the reference's group when
/// `on_reference[j]` or when it shares the reference's base matrices, and any other model the
/// group of a model whose base it shares.
fn adapter_groups(models: &[&Model], on_reference: &[bool]) -> Vec<AdapterGroup> {
    let mut groups: Vec<AdapterGroup> = Vec::new();
    for (j, m) in models.iter().enumerate() {
        let base = m.without_adapter();
        let known = j > 0 && on_reference.get(j).copied().unwrap_or(false);
        let found = groups
            .iter()
            .position(|g| (known && g.members[0] == 0) || g.base.shares_base(&base));
        match found {
            Some(g) => {
                groups[g].members.push(j);
                groups[g].adapters.push(m.adapter().cloned());
            }
            None => groups.push(AdapterGroup {
                base,
                members: vec![j],
                adapters: vec![m.adapter().cloned()],
            }),
        }
    }
    groups.retain(|g| g.members.len() > 1);
    groups
}

/// Errors when a row holds NaN or an infinity; `at(i)` names row `i` for the message.
pub(crate) fn check_finite(
    rows: &[Vec<f32>],
    at: impl Fn(usize) -> String,
) -> Result<(), DeraError> {
    for (i, row) in rows.iter().enumerate() {
        if let Some(&value) = row.iter().find(|v| !v.is_finite()) {
            return Err(DeraError::NonFinite { at: at(i), value });
        }
    }
    Ok(())
}

/// Reads a `[B, V]` tensor back to the host as `B` rows.
pub(crate) fn to_rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>, DeraError> {
    let [b, v] = t.dims();
    let flat = t
        .try_into_vec_as::<f32>()
        .map_err(|e| dera_models::ModelError::Readback(format!("{e:?}")))?;
    Ok(flat
        .chunks_exact(v.max(1))
        .take(b)
        .map(<[f32]>::to_vec)
        .collect())
}
