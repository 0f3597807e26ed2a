//! Where a model's weights come from: a checkpoint on disk or tensors held in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Checkpoint, CheckpointError};

/// A named collection of tensors that a model can be built from.
pub trait TensorSource {
    /// Tensor `name` as `f32` with its shape.
    fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError>;
    /// Whether tensor `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Where the tensors live, for error messages.
    fn origin(&self) -> &Path;

    /// Tensor `name` in its stored form, when the source keeps it in a shared buffer (a
    /// memory-mapped file); `None` means "read it with [`Self::read_f32`]".
    fn stored(&self, _name: &str) -> Option<crate::StoredTensor> {
        None
    }

    /// Tensor `name` as llama.cpp blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS), when the source stores it that way (a
    /// GGUF file); `None` means "read it with [`Self::read_f32`]".
    fn stored_blocks(&self, _name: &str) -> Option<Result<crate::BlockTensor, CheckpointError>> {
        None
    }

    /// Tensor `name`, checked against the shape the caller expects.
    fn read_f32_shaped(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let (values, shape) = self.read_f32(name)?;
        if shape != expected {
            return Err(CheckpointError::Shape {
                name: name.to_string(),
                path: self.origin().to_path_buf(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(values)
    }
}

impl TensorSource for Checkpoint {
    fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        Checkpoint::read_f32(self, name)
    }
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }
    fn origin(&self) -> &Path {
        self.dir()
    }
    fn stored(&self, name: &str) -> Option<crate::StoredTensor> {
        Checkpoint::stored(self, name)
    }
    fn read_f32_shaped(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        Checkpoint::read_f32_shaped(self, name, expected)
    }
}

/// Tensors held in memory as `f32` (for example the result of an in-memory merge).
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    origin: PathBuf,
    tensors: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
}

impl TensorMap {
    /// An empty map; `origin` names it in error messages.
    pub fn new(origin: impl Into<PathBuf>) -> Self {
        Self {
            origin: origin.into(),
            tensors: BTreeMap::new(),
        }
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, values: Vec<f32>, shape: Vec<usize>) {
        self.tensors.insert(name.into(), (values, shape));
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A tensor's values and shape.
    pub fn get(&self, name: &str) -> Option<(&[f32], &[usize])> {
        self.tensors
            .get(name)
            .map(|(v, s)| (v.as_slice(), s.as_slice()))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl TensorSource for TensorMap {
    fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
                dir: self.origin.clone(),
            })
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn origin(&self) -> &Path {
        &self.origin
    }
}
