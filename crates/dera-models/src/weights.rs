//! Turning named checkpoint tensors into burn tensors on a device.

use burn::tensor::{Device, Tensor, TensorData};
use dera_checkpoint::{CheckpointError, TensorSource};

use crate::ModelError;

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
}

/// [`Weights`] read from host memory (a memory-mapped checkpoint or a [`dera_checkpoint::TensorMap`]),
/// converted to `f32` and uploaded to `device`.
pub struct HostWeights<'a> {
    source: &'a dyn TensorSource,
    device: Device,
}

impl<'a> HostWeights<'a> {
    /// Weights from `source`, placed on `device`.
    pub fn new(source: &'a dyn TensorSource, device: Device) -> Self {
        Self { source, device }
    }

    /// The underlying source.
    pub fn source(&self) -> &dyn TensorSource {
        self.source
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

    fn conv1d(&self, name: &str, inp: usize, out: usize) -> Result<Tensor<2>, ModelError> {
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

/// Reads an embedding matrix, turning a row-count mismatch into [`ModelError::VocabMismatch`].
pub(crate) fn embedding(
    w: &dyn Weights,
    name: &str,
    vocab: usize,
    width: usize,
) -> Result<Tensor<2>, ModelError> {
    vocab_checked(w.matrix(name, vocab, width), name, vocab, width)
}

/// Reads an output head `[vocab, width]` (as stored), with the same vocabulary check.
pub(crate) fn output_head(
    w: &dyn Weights,
    name: &str,
    vocab: usize,
    width: usize,
) -> Result<Tensor<2>, ModelError> {
    vocab_checked(w.linear(name, vocab, width), name, vocab, width)
}

fn vocab_checked(
    result: Result<Tensor<2>, ModelError>,
    name: &str,
    vocab: usize,
    width: usize,
) -> Result<Tensor<2>, ModelError> {
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
