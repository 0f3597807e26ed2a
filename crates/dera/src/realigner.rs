//! The reference and aligned models, loaded together.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dera_mix::{Mixture, VocabPolicy, logit_width};
use dera_models::burn::tensor::{Device, Tensor, TensorData};
use dera_models::{CausalLm, LoadOptions, LoadedModel, Tokenizer};

use crate::DeraError;

/// A reference model and K aligned models that decode in lockstep.
#[derive(Debug)]
pub struct Realigner {
    pub(crate) models: Vec<LoadedModel>,
    pub(crate) width: usize,
    pub(crate) device: Device,
    load_ms: f64,
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
            // A full checkpoint, or a PEFT adapter folder applied to the reference's weights.
            let model = dera_models::load_aligned(&models[0], dir, device, options)?;
            models.push(model);
        }
        let mut r = Self::from_models(models, policy)?;
        r.load_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(r)
    }

    /// Combines already loaded models: the first is the reference.
    pub fn from_models(models: Vec<LoadedModel>, policy: VocabPolicy) -> Result<Self, DeraError> {
        let first = models
            .first()
            .ok_or_else(|| DeraError::Request("no models".into()))?;
        let device = first.model.device().clone();
        let widths: Vec<usize> = models.iter().map(|m| m.model.vocab_size()).collect();
        let tok = first.tokenizer.as_ref().map(Tokenizer::vocab_size);
        let width = match policy {
            VocabPolicy::Strict => logit_width(&widths, None, policy)?,
            VocabPolicy::TruncateToTokenizer => logit_width(&widths, tok, policy)?,
        };
        Ok(Self {
            models,
            width,
            device,
            load_ms: 0.0,
        })
    }

    /// The reference model.
    pub fn reference(&self) -> &LoadedModel {
        &self.models[0]
    }

    /// All models, reference first.
    pub fn models(&self) -> &[LoadedModel] {
        &self.models
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
        Ok(self.reference().tokenizer()?)
    }

    /// End-of-sequence ids of the reference.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.reference().eos_token_ids
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

    /// The context every model can attend over (the smallest `max_position_embeddings`), and
    /// the checkpoint directory that sets it.
    pub fn context_len(&self) -> (usize, &Path) {
        self.models
            .iter()
            .map(|m| (m.model.config().max_position_embeddings, m.dir.as_path()))
            .min_by_key(|&(n, _)| n)
            .unwrap_or((usize::MAX, Path::new("")))
    }

    /// `prompt + new` positions must fit [`Realigner::context_len`].
    pub(crate) fn check_context(
        &self,
        at: &str,
        prompt: usize,
        new: usize,
    ) -> Result<(), DeraError> {
        let (context, dir) = self.context_len();
        let total = prompt.saturating_add(new);
        if total > context {
            return Err(DeraError::Context {
                at: at.to_string(),
                prompt,
                new,
                total,
                context,
                model: dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// Mixes per-model logits `[B, V_j]` with per-row coefficients into `[B, width]` on the
    /// device; `logits[k]` belongs to model `models[k]` (models left out add nothing).
    pub(crate) fn mix(
        &self,
        logits: Vec<Tensor<2>>,
        models: &[usize],
        mixtures: &[&Mixture],
    ) -> Tensor<2> {
        let b = mixtures.len();
        let coefs: Vec<Vec<f32>> = mixtures.iter().map(|m| m.coefficients_f32()).collect();
        let mut mixed: Option<Tensor<2>> = None;
        for (h, &j) in logits.into_iter().zip(models) {
            let h = if h.dims()[1] == self.width {
                h
            } else {
                h.narrow(1, 0, self.width)
            };
            let c: Vec<f32> = coefs.iter().map(|row| row[j]).collect();
            let c = Tensor::<2>::from_data(TensorData::new(c, [b, 1]), &self.device);
            let term = h * c;
            mixed = Some(match mixed {
                None => term,
                Some(acc) => acc + term,
            });
        }
        mixed.unwrap_or_else(|| Tensor::zeros([b, self.width], &self.device))
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
