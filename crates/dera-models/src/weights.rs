//! Turning named checkpoint tensors into burn tensors on a device.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use dera_checkpoint::{CheckpointError, TensorSource};
use dera_kernels::{Bytes, HostMatrix};

use crate::ModelError;
use crate::layers::Dense;
use crate::precision::{LoadOptions, stored_format};

/// Named parameters a model is built from, in Hugging Face names and shapes.
///
/// [`HostWeights`] reads them from a checkpoint (or any [`TensorSource`]); a trainer can
/// implement this trait to hand out tensors that track gradients.
pub trait Weights {
    /// The device the tensors live on.
    fn device(&self) -> &Device;
    /// Whether tensor `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Tensor `name`, which must have `shape`, flattened.
    fn flat(&self, name: &str, shape: &[usize]) -> Result<Tensor<1>, ModelError>;

    /// A vector of length `n`.
    fn vector(&self, name: &str, n: usize) -> Result<Tensor<1>, ModelError> {
        self.flat(name, &[n])
    }
    /// A matrix stored `[rows, cols]`, returned as is.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>, ModelError> {
        Ok(self.flat(name, &[rows, cols])?.reshape([rows, cols]))
    }
    /// A `torch.nn.Linear` weight stored `[out, in]`, returned as stored: the model applies it
    /// as `(W x^T)^T`, which streams `W` in its stored row-major layout.
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Tensor<2>, ModelError> {
        self.matrix(name, out, inp)
    }
    /// A GPT-2 `Conv1D` weight stored `[in, out]`, returned as `[out, in]` like [`Self::linear`].
    fn conv1d(&self, name: &str, inp: usize, out: usize) -> Result<Tensor<2>, ModelError> {
        Ok(self.matrix(name, inp, out)?.transpose())
    }
    /// Weight matrix `name` as `[rows, cols]` in host memory for the CPU kernels, or `None` to
    /// use burn tensors from [`Self::linear`] / [`Self::conv1d`] (the default). `transposed`:
    /// the checkpoint stores it `[cols, rows]` (GPT-2's `Conv1D`).
    fn host_matrix(
        &self,
        _name: &str,
        _rows: usize,
        _cols: usize,
        _transposed: bool,
    ) -> Option<Result<HostMatrix, ModelError>> {
        None
    }
}

/// A `torch.nn.Linear` weight `[out, in]` as a [`Dense`] layer weight.
pub(crate) fn dense(
    w: &dyn Weights,
    name: &str,
    out: usize,
    inp: usize,
) -> Result<Dense, ModelError> {
    match w.host_matrix(name, out, inp, false) {
        Some(m) => Ok(Dense::Host(vec![Arc::new(m?)])),
        None => Ok(Dense::Device(w.linear(name, out, inp)?)),
    }
}

/// A GPT-2 `Conv1D` weight stored `[in, out]` as a [`Dense`] layer weight `[out, in]`.
pub(crate) fn dense_conv1d(
    w: &dyn Weights,
    name: &str,
    inp: usize,
    out: usize,
) -> Result<Dense, ModelError> {
    match w.host_matrix(name, out, inp, true) {
        Some(m) => Ok(Dense::Host(vec![Arc::new(m?)])),
        None => Ok(Dense::Device(w.conv1d(name, inp, out)?)),
    }
}

/// [`Weights`] read from host memory (a memory-mapped checkpoint or a [`dera_checkpoint::TensorMap`]),
/// converted to `f32` and uploaded to `device`.
pub struct HostWeights<'a> {
    source: &'a dyn TensorSource,
    device: Device,
    options: LoadOptions,
}

impl<'a> HostWeights<'a> {
    /// Weights from `source`, placed on `device`, matrices as stored.
    pub fn new(source: &'a dyn TensorSource, device: Device) -> Self {
        Self::with_options(source, device, LoadOptions::default())
    }

    /// Weights from `source`, placed on `device`, matrices in the format `options` choose.
    pub fn with_options(
        source: &'a dyn TensorSource,
        device: Device,
        options: LoadOptions,
    ) -> Self {
        Self {
            source,
            device,
            options,
        }
    }

    /// Whether matrices are kept on the host for the CPU kernels (the flex device).
    fn on_host(&self) -> bool {
        self.device == Device::flex()
    }

    /// Matrix `name` (`[rows, cols]`, or `[cols, rows]` when `transposed`) in the chosen format:
    /// in place in the memory map when the format is the stored one, else converted; also in
    /// panels of 16 rows (stored format) when the options ask for them
    /// ([`crate::LoadOptions::panels`]).
    fn build_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Result<HostMatrix, ModelError> {
        let m = self.stored_matrix(name, rows, cols, transposed)?;
        Ok(if self.options.panels {
            m.with_panels()
        } else {
            m
        })
    }

    /// [`Self::build_matrix`] without panels.
    fn stored_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Result<HostMatrix, ModelError> {
        let head = ["embed_tokens.weight", "lm_head.weight", "wte.weight"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        let weight_err = |e: dera_kernels::KernelError| ModelError::Weight {
            tensor: name.to_string(),
            reason: e.to_string(),
        };
        // llama.cpp blocks (a GGUF file): kept as they are when the options choose their format.
        if !transposed && let Some(blocks) = self.source.stored_blocks(name) {
            let t = blocks?;
            let stored = t.format;
            let format = self.options.format_for_stored(Some(stored), cols, head);
            if format == stored && t.shape == [rows, cols] {
                return HostMatrix::from_bytes(
                    format,
                    rows,
                    cols,
                    Bytes::Shared(t.buffer, t.range),
                )
                .map_err(weight_err);
            }
            let values = self.source.read_f32_shaped(name, &[rows, cols])?;
            return HostMatrix::from_f32(&values, rows, cols, format).map_err(weight_err);
        }
        let stored = self.source.stored(name);
        let stored_dtype = stored
            .as_ref()
            .map_or(dera_checkpoint::Dtype::F32, |t| t.dtype);
        let format = self.options.format_for_tensor(stored_dtype, cols, head);
        if let Some(t) = stored
            && !transposed
            && t.shape == [rows, cols]
            && stored_format(t.dtype) == Some(format)
        {
            return HostMatrix::from_bytes(format, rows, cols, Bytes::Shared(t.buffer, t.range))
                .map_err(weight_err);
        }
        let values = if transposed {
            let v = self.source.read_f32_shaped(name, &[cols, rows])?;
            let mut t = vec![0f32; v.len()];
            for (i, row) in v.chunks_exact(rows).enumerate() {
                for (o, &x) in row.iter().enumerate() {
                    t[o * cols + i] = x;
                }
            }
            t
        } else {
            self.source.read_f32_shaped(name, &[rows, cols])?
        };
        HostMatrix::from_f32(&values, rows, cols, format).map_err(weight_err)
    }

    /// A matrix as an f32 tensor holding the values of the chosen format (rounded/quantized when
    /// the options ask for it), for devices without the CPU kernels.
    fn widened(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Result<Tensor<2>, ModelError> {
        let m = self.build_matrix(name, rows, cols, transposed)?;
        Ok(Tensor::from_data(
            TensorData::new(m.to_f32(), [rows, cols]),
            &self.device,
        ))
    }

    /// Whether the options can change the values (anything but "as stored" / f32).
    fn rounds(&self) -> bool {
        use crate::precision::WeightDtype;
        self.options.quantize.is_some()
            || matches!(self.options.dtype, WeightDtype::Bf16 | WeightDtype::F16)
    }
}

impl Weights for HostWeights<'_> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, name: &str) -> bool {
        self.source.contains(name)
    }

    fn flat(&self, name: &str, shape: &[usize]) -> Result<Tensor<1>, ModelError> {
        let values = self.source.read_f32_shaped(name, shape)?;
        let n = values.len();
        Ok(Tensor::from_data(
            TensorData::new(values, [n]),
            &self.device,
        ))
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Tensor<2>, ModelError> {
        if self.rounds() {
            return self.widened(name, out, inp, false);
        }
        self.matrix(name, out, inp)
    }

    fn host_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Option<Result<HostMatrix, ModelError>> {
        self.on_host()
            .then(|| self.build_matrix(name, rows, cols, transposed))
    }

    fn conv1d(&self, name: &str, inp: usize, out: usize) -> Result<Tensor<2>, ModelError> {
        if self.rounds() {
            return self.widened(name, out, inp, true);
        }
        // Transpose on the host once, so every backend gets a contiguous `[out, in]` matrix.
        let values = self.source.read_f32_shaped(name, &[inp, out])?;
        let mut t = vec![0f32; values.len()];
        for (i, row) in values.chunks_exact(out).enumerate() {
            for (o, &x) in row.iter().enumerate() {
                t[o * inp + i] = x;
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(t, [out, inp]),
            &self.device,
        ))
    }
}

/// Reads an embedding matrix (also the tied output head), turning a row-count mismatch into
/// [`ModelError::VocabMismatch`].
pub(crate) fn embedding(
    w: &dyn Weights,
    name: &str,
    vocab: usize,
    width: usize,
) -> Result<Dense, ModelError> {
    let d = match w.host_matrix(name, vocab, width, false) {
        Some(m) => m.map(|m| Dense::Host(vec![Arc::new(m)])),
        None => w.linear(name, vocab, width).map(Dense::Device),
    };
    vocab_checked(d, name, vocab, width)
}

/// Reads an output head `[vocab, width]` (as stored), with the same vocabulary check.
pub(crate) fn output_head(
    w: &dyn Weights,
    name: &str,
    vocab: usize,
    width: usize,
) -> Result<Dense, ModelError> {
    vocab_checked(dense(w, name, vocab, width), name, vocab, width)
}

fn vocab_checked<T>(
    result: Result<T, ModelError>,
    name: &str,
    vocab: usize,
    width: usize,
) -> Result<T, ModelError> {
    match result {
        Err(ModelError::Checkpoint(CheckpointError::Shape { found, path, .. }))
            if found.len() == 2 && found[1] == width && found[0] != vocab =>
        {
            Err(ModelError::VocabMismatch {
                path,
                config: vocab,
                weights: found[0],
                tensor: name.to_string(),
            })
        }
        other => other,
    }
}
