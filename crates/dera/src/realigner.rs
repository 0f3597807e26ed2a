//! The reference and aligned models, loaded together.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dera_mix::{Mixture, Term, VocabPolicy, logit_width, mix_logits};
use dera_models::burn::tensor::{Device, Tensor};
use dera_models::{CausalLm, LoadOptions, LoadedModel, Tokenizer};

use crate::{ChatTemplate, DeraError};

/// A model the engine mixes: any [`CausalLm`], shared between threads.
pub type SharedModel = Arc<dyn CausalLm + Send + Sync>;

/// A reference model and K aligned models that decode in lockstep.
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
}

impl fmt::Debug for Realigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Realigner")
            .field("models", &self.names)
            .field("width", &self.width)
            .field("device", &self.device)
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

    /// [`Self::load`] with the weights' in-memory format (`--dtype`, `--quantize`).
    pub fn load_with(
        reference: &Path,
        aligned: &[PathBuf],
        device: &Device,
        policy: VocabPolicy,
        options: &LoadOptions,
    ) -> Result<Self, DeraError> {
        let start = Instant::now();
        let mut models = vec![dera_models::load_with(reference, device, options)?];
        for dir in aligned {
            models.push(dera_models::load_with(dir, device, options)?);
        }
        let mut r = Self::from_models(models, policy)?;
        r.load_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(r)
    }

    /// Combines already loaded models: the first is the reference.
    pub fn from_models(models: Vec<LoadedModel>, policy: VocabPolicy) -> Result<Self, DeraError> {
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
        })
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
