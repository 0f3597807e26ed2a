//! The dry run: what a merge would read and write, checked but not executed.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use dera_checkpoint::{Dtype, INDEX_FILE, SINGLE_FILE};
use dera_lora::Adapter;

use crate::error::Result;
use crate::spec::{Accumulate, MergeInputs, MergeOptions};
use crate::validate::{Validated, validate};
use crate::writer::{CHUNK_ELEMS, HASH_BUF, WRITE_BUF};

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Tensor name.
    pub name: String,
    /// Output shape (rows truncated under [`crate::VocabPolicy::TruncateToSmallest`]).
    pub shape: Vec<usize>,
    /// Input dtype (the same in every model).
    pub dtype: Dtype,
    /// Output dtype.
    pub out_dtype: Dtype,
    /// `true` when interpolated; `false` for a non-float tensor copied from the reference
    /// (identical in every model).
    pub merged: bool,
    /// Whether the tensor has one row per vocabulary entry (embedding or output head).
    pub is_vocab: bool,
}

impl TensorPlan {
    /// Number of output elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes read from each input that contributes.
    pub fn in_bytes(&self) -> u64 {
        bytes_of(self.dtype, self.elements())
    }
    /// Bytes written.
    pub fn out_bytes(&self) -> u64 {
        bytes_of(self.out_dtype, self.elements())
    }
}

/// Bytes of `n` elements of `dtype` (sub-byte dtypes included).
fn bytes_of(dtype: Dtype, n: usize) -> u64 {
    (n as u64 * dtype.bitsize() as u64).div_ceil(8)
}

/// One output safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// File name inside the output directory.
    pub file: String,
    /// Indices into [`MergePlan::tensors`].
    pub tensors: Range<usize>,
    /// Tensor data bytes (header excluded).
    pub bytes: u64,
}

/// A checked description of a merge. Its [`Display`](fmt::Display) is for humans.
#[derive(Debug, Clone, PartialEq)]
pub struct MergePlan {
    /// Output directory.
    pub out: PathBuf,
    /// Reference first, then the aligned checkpoints.
    pub inputs: Vec<PathBuf>,
    /// `[1 - sum(lambdas), lambda_1, ..., lambda_K]`, matching `inputs`.
    pub coefficients: Vec<f64>,
    /// Accumulation precision.
    pub accumulate: Accumulate,
    /// LoRA adapters and their lambdas: `lambda * scale * B A` is added to each adapted weight.
    pub adapters: Vec<(PathBuf, f64)>,
    /// Output tensors in write order.
    pub tensors: Vec<TensorPlan>,
    /// Output files; one `model.safetensors` unless sharded.
    pub shards: Vec<ShardPlan>,
    /// Tensors present in only some inputs and left out (a tied `lm_head.weight`).
    pub ignored: Vec<String>,
    /// Common vocabulary size when embedding rows were truncated.
    pub vocab_size: Option<usize>,
    /// Tensor bytes read from the inputs (inputs with a zero coefficient are not read).
    pub bytes_read: u64,
    /// Input file bytes read once more to compute their SHA-256 (0 when not hashing).
    pub bytes_hashed: u64,
    /// Tensor bytes written (headers excluded).
    pub bytes_written: u64,
    /// Working memory of the streamed merge: chunk buffers and I/O buffers, excluding the
    /// page cache and the program itself. Independent of model size beyond one chunk.
    pub estimated_peak_bytes: u64,
}

impl MergePlan {
    /// Whether the output is sharded with a `model.safetensors.index.json`.
    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// Indices of the inputs that are read (non-zero coefficient).
    pub fn read_inputs(&self) -> Vec<usize> {
        (0..self.coefficients.len())
            .filter(|&i| self.coefficients[i] != 0.0)
            .collect()
    }
}

/// Validates `inputs` and describes the merge into `out` without writing anything.
pub fn plan(inputs: &MergeInputs, out: &Path, options: &MergeOptions) -> Result<MergePlan> {
    plan_with(inputs, &[], out, options)
}

/// [`plan`] with LoRA adapters (see [`crate::merge_checkpoints_with`]).
pub fn plan_with(
    inputs: &MergeInputs,
    adapters: &[(&Adapter, f64)],
    out: &Path,
    options: &MergeOptions,
) -> Result<MergePlan> {
    prepare(inputs, adapters, out, options).map(|(_, plan)| plan)
}

pub(crate) fn prepare(
    inputs: &MergeInputs,
    adapters: &[(&Adapter, f64)],
    out: &Path,
    options: &MergeOptions,
) -> Result<(Validated, MergePlan)> {
    let v = validate(inputs, adapters, Some(out), options)?;
    let read = v.coefficients.iter().filter(|&&c| c != 0.0).count() as u64;
    let shards = assign_shards(&v.tensors, options.max_shard_size);
    let bytes_read = v
        .tensors
        .iter()
        .map(|t| t.in_bytes() * if t.merged { read } else { 1 })
        .sum();
    let bytes_hashed = if options.hash_inputs {
        v.checkpoints
            .iter()
            .flat_map(|c| c.files())
            .map(|f| f.bytes().len() as u64)
            .sum()
    } else {
        0
    };
    let chunk_bytes = v
        .tensors
        .iter()
        .map(|t| {
            let n = t.elements().min(CHUNK_ELEMS);
            read * bytes_of(t.dtype, n) + bytes_of(t.out_dtype, n)
        })
        .max()
        .unwrap_or(0);
    let files = v.checkpoints.iter().map(|c| c.files().len()).sum::<usize>();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let hash_threads = if options.hash_inputs {
        files.min(cores) as u64
    } else {
        0
    };
    let plan = MergePlan {
        out: out.to_path_buf(),
        inputs: inputs.dirs().cloned().collect(),
        coefficients: v.coefficients.clone(),
        accumulate: options.accumulate,
        adapters: adapters.iter().map(|(a, l)| (a.dir.clone(), *l)).collect(),
        bytes_written: v.tensors.iter().map(TensorPlan::out_bytes).sum(),
        tensors: v.tensors.clone(),
        shards,
        ignored: v.ignored.clone(),
        vocab_size: v.vocab_size,
        bytes_read,
        bytes_hashed,
        estimated_peak_bytes: chunk_bytes + WRITE_BUF as u64 + hash_threads * HASH_BUF as u64,
    };
    Ok((v, plan))
}

/// Fills shards in order, starting a new one when the next tensor would exceed `max` bytes
/// (a tensor larger than `max` gets a shard of its own), as `transformers` does.
fn assign_shards(tensors: &[TensorPlan], max: u64) -> Vec<ShardPlan> {
    let mut ranges: Vec<(Range<usize>, u64)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        match ranges.last_mut() {
            Some((r, bytes)) if *bytes == 0 || *bytes + t.out_bytes() <= max => {
                r.end = i + 1;
                *bytes += t.out_bytes();
            }
            _ => ranges.push((i..i + 1, t.out_bytes())),
        }
    }
    if ranges.is_empty() {
        ranges.push((0..0, 0));
    }
    let n = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, (tensors, bytes))| ShardPlan {
            file: if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                shard_file_name(i, n)
            },
            tensors,
            bytes,
        })
        .collect()
}

/// `model-00001-of-00003.safetensors`, the `transformers` / `huggingface_hub` shard name.
pub fn shard_file_name(index: usize, count: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", index + 1, count)
}

/// Decimal bytes for humans: `1.45 GB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

impl fmt::Display for MergePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "merge into {}", self.out.display())?;
        for (i, (dir, c)) in self.inputs.iter().zip(&self.coefficients).enumerate() {
            let role = if i == 0 { "reference" } else { "aligned  " };
            writeln!(f, "  {role} {:<+10.6} {}", c, dir.display())?;
        }
        for (dir, l) in &self.adapters {
            writeln!(
                f,
                "  adapter   {:<+10.6} {} (lambda * scale * B A)",
                l,
                dir.display()
            )?;
        }
        let merged = self.tensors.iter().filter(|t| t.merged).count();
        writeln!(
            f,
            "  {} tensors ({merged} interpolated in {:?}, {} copied)",
            self.tensors.len(),
            self.accumulate,
            self.tensors.len() - merged
        )?;
        let mut dtypes: Vec<String> = self
            .tensors
            .iter()
            .map(|t| format!("{:?} -> {:?}", t.dtype, t.out_dtype))
            .collect();
        dtypes.sort();
        dtypes.dedup();
        writeln!(f, "  dtypes: {}", dtypes.join(", "))?;
        if !self.ignored.is_empty() {
            writeln!(f, "  ignored (tied): {}", self.ignored.join(", "))?;
        }
        if let Some(v) = self.vocab_size {
            writeln!(f, "  vocabulary truncated to {v} rows")?;
        }
        let files = if self.is_sharded() {
            format!("{} shards + {INDEX_FILE}", self.shards.len())
        } else {
            SINGLE_FILE.to_string()
        };
        writeln!(
            f,
            "  read {}, write {} ({files}), hash {}",
            human_bytes(self.bytes_read),
            human_bytes(self.bytes_written),
            human_bytes(self.bytes_hashed)
        )?;
        write!(
            f,
            "  estimated working memory {}",
            human_bytes(self.estimated_peak_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: usize) -> TensorPlan {
        TensorPlan {
            name: format!("t{n}"),
            shape: vec![n],
            dtype: Dtype::F32,
            out_dtype: Dtype::F32,
            merged: true,
            is_vocab: false,
        }
    }

    #[test]
    fn shards_like_transformers() {
        let ts = [t(10), t(10), t(30), t(5), t(1)];
        let s = assign_shards(&ts, 80);
        let got: Vec<_> = s.iter().map(|s| (s.tensors.clone(), s.bytes)).collect();
        assert_eq!(got, vec![(0..2, 80), (2..3, 120), (3..5, 24)]);
        assert_eq!(s[0].file, "model-00001-of-00003.safetensors");
        let one = assign_shards(&ts, 1000);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].file, "model.safetensors");
        assert_eq!(human_bytes(1_450_000_000), "1.45 GB");
    }
}
