//! What to merge and how: inputs, options, coefficients and sizes.

use std::path::PathBuf;

use dera_checkpoint::Dtype;

use crate::error::{MergeError, Result};

/// The checkpoints to merge and their mixing weights.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeInputs {
    /// The reference checkpoint directory (coefficient `1 - sum(lambdas)`).
    pub reference: PathBuf,
    /// The aligned checkpoint directories.
    pub aligned: Vec<PathBuf>,
    /// One weight per aligned checkpoint; any finite value (negative or above 1 extrapolates).
    pub lambdas: Vec<f64>,
}

impl MergeInputs {
    /// The reference followed by the aligned checkpoints.
    pub fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.reference).chain(&self.aligned)
    }
}

/// Element type of the merged checkpoint's floating-point tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    /// IEEE single precision.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half precision.
    F16,
}

impl OutDtype {
    /// The safetensors dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::BF16 => Dtype::BF16,
            Self::F16 => Dtype::F16,
        }
    }

    /// The `torch_dtype` spelling used in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::BF16 => "bfloat16",
            Self::F16 => "float16",
        }
    }
}

impl std::str::FromStr for OutDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype {s:?} (expected f32, bf16 or f16)")),
        }
    }
}

/// Precision of the weighted sum. F64 tensors are always summed in `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accumulate {
    /// Sum in `f32` (the usual PyTorch recipe).
    #[default]
    F32,
    /// Sum in `f64`, then round once to the output dtype.
    F64,
}

/// What to do when embedding / output-head row counts (vocabulary sizes) differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VocabPolicy {
    /// A vocabulary mismatch is an error.
    #[default]
    Strict,
    /// Merge only the first `min` rows and set `vocab_size` to `min` in the copied config.
    TruncateToSmallest,
}

/// 5 GB, the `max_shard_size` default of `transformers`.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// How to merge.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOptions {
    /// Output dtype for floating-point tensors; `None` keeps each tensor's input dtype.
    pub dtype: Option<OutDtype>,
    /// Accumulation precision.
    pub accumulate: Accumulate,
    /// Largest shard, in bytes of tensor data; bigger outputs are sharded.
    pub max_shard_size: u64,
    /// Replace an existing output directory (only once the new one is complete).
    pub force: bool,
    /// Vocabulary mismatch handling.
    pub vocab: VocabPolicy,
    /// `fsync` every written file before the final rename.
    pub sync: bool,
    /// Record each input file's SHA-256 in the output metadata (an extra read of the inputs,
    /// overlapped with the merge).
    pub hash_inputs: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            accumulate: Accumulate::F32,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            force: false,
            vocab: VocabPolicy::Strict,
            sync: false,
            hash_inputs: true,
        }
    }
}

/// Progress of a streamed merge, reported after each tensor.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Tensors written so far.
    pub done: usize,
    /// Tensors to write.
    pub total: usize,
    /// The tensor just written.
    pub name: String,
    /// Output tensor bytes written so far.
    pub bytes_done: u64,
    /// Output tensor bytes to write.
    pub bytes_total: u64,
}

/// The coefficients `[1 - sum(lambdas), lambda_1, ..., lambda_K]` (reference first).
///
/// Non-finite lambdas, a non-finite sum, or a coefficient beyond [`dera_mix::MAX_COEFFICIENT`]
/// are errors naming the value.
pub fn coefficients(lambdas: &[f64]) -> Result<Vec<f64>> {
    use dera_mix::MixError;
    dera_mix::coefficients(lambdas).map_err(|e| match e {
        MixError::NonFiniteLambda { index, value } => MergeError::NonFiniteLambda { index, value },
        MixError::LambdaTooLarge {
            index,
            value,
            limit,
        } => MergeError::CoefficientLimit {
            what: format!("lambda[{index}]"),
            value,
            limit,
        },
        MixError::CoefficientTooLarge { value, limit } => MergeError::CoefficientLimit {
            what: "the reference coefficient 1 - sum(lambda)".into(),
            value,
            limit,
        },
        other => MergeError::Mix(other),
    })
}

/// Parses a byte size: a plain number of bytes, or a number with a decimal (`KB`, `MB`,
/// `GB`, `TB`) or binary (`KiB`, `MiB`, `GiB`, `TiB`) unit, as in `"5GB"`, `"500MB"`, `"2GiB"`.
pub fn parse_size(text: &str) -> Result<u64> {
    let err = |reason: &str| MergeError::Size {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(err(
                "unknown unit (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)",
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| err("not a number"))?;
    let bytes = (value * scale as f64).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(err("must be at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size(" 1.5 gb ").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("10KiB").unwrap(), 10240);
        for bad in ["", "GB", "5XB", "0", "-1GB", "1.2.3MB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(
            parse_size("5XB")
                .unwrap_err()
                .to_string()
                .contains("\"5XB\"")
        );
    }

    #[test]
    fn coefficient_form() {
        assert_eq!(coefficients(&[]).unwrap(), vec![1.0]);
        assert_eq!(coefficients(&[0.25, 0.5]).unwrap(), vec![0.25, 0.25, 0.5]);
        assert_eq!(coefficients(&[2.0]).unwrap(), vec![-1.0, 2.0]);
        let e = coefficients(&[0.1, f64::NAN]).unwrap_err().to_string();
        assert_eq!(e, "lambda[1] = NaN is not finite");
        let e = coefficients(&[f64::INFINITY]).unwrap_err().to_string();
        assert_eq!(e, "lambda[0] = inf is not finite");
        assert!(coefficients(&[f64::MAX, f64::MAX]).is_err());
    }

    #[test]
    fn dtype_names() {
        assert_eq!("bf16".parse::<OutDtype>().unwrap(), OutDtype::BF16);
        assert_eq!("float16".parse::<OutDtype>().unwrap(), OutDtype::F16);
        assert!("int8".parse::<OutDtype>().is_err());
    }
}
