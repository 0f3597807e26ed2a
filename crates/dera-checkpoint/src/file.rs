//! One memory-mapped safetensors file.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, SafeTensors};

use crate::CheckpointError;
use crate::convert::{bytes_to_f32, dtype_name};

/// A borrowed view of one tensor's bytes inside a mapped file.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Row-major shape.
    pub shape: &'a [usize],
    /// Little-endian data bytes.
    pub bytes: &'a [u8],
}

/// One tensor's bytes left in place inside a shared buffer (a file's memory map), for
/// consumers that compute on the stored values directly instead of converting them.
#[derive(Clone)]
pub struct StoredTensor {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// The buffer holding the bytes (kept alive as long as the tensor is used).
    pub buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// Where the little-endian data lies in `buffer`.
    pub range: Range<usize>,
}

impl std::fmt::Debug for StoredTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("range", &self.range)
            .finish()
    }
}

/// A llama.cpp block layout that weights can be kept in without conversion: one of the
/// quantized formats of `dera-kernels`, which multiplies them in place (the same byte layouts).
pub use dera_kernels::WeightFormat as BlockFormat;

/// A `[rows, cols]` matrix stored as llama.cpp blocks (each row a whole number of blocks),
/// in a shared buffer (a GGUF file's memory map, or bytes reordered once at load).
#[derive(Clone)]
pub struct BlockTensor {
    /// The block layout.
    pub format: BlockFormat,
    /// Row-major shape `[rows, cols]`.
    pub shape: Vec<usize>,
    /// The buffer holding the blocks.
    pub buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// Where the blocks lie in `buffer`.
    pub range: Range<usize>,
}

impl std::fmt::Debug for BlockTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockTensor")
            .field("format", &self.format)
            .field("shape", &self.shape)
            .field("range", &self.range)
            .finish()
    }
}

/// A safetensors file mapped into memory with its header parsed and validated.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header: offsets must cover the data buffer exactly.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified while mapped is outside our contract
        // (the same assumption every safetensors loader makes).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| CheckpointError::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in file order (by data offset).
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// The optional `__metadata__` string map.
    pub fn user_metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// The whole mapped file (for hashing).
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// A borrowed view of tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.metadata.info(name)?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        Some(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            bytes,
        })
    }

    /// Tensor `name` left in the memory map (no copy), if present.
    pub fn stored(&self, name: &str) -> Option<StoredTensor> {
        let info = self.metadata.info(name)?;
        let (start, end) = info.data_offsets;
        let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = self.mmap.clone();
        Some(StoredTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            buffer,
            range: self.data_start + start..self.data_start + end,
        })
    }

    /// Tensor `name` converted to `f32`, with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        let raw = self
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
                dir: self.path.clone(),
            })?;
        let values = bytes_to_f32(raw.dtype, raw.bytes).ok_or_else(|| {
            CheckpointError::UnsupportedDtype {
                name: name.to_string(),
                path: self.path.clone(),
                dtype: dtype_name(raw.dtype),
            }
        })?;
        Ok((values, raw.shape.to_vec()))
    }
}
