//! Checks run before anything is written: coefficients, output path, architectures, and
//! that every model has the same tensors with the same shapes and dtypes.

use std::collections::BTreeSet;
use std::path::Path;

use dera_checkpoint::{CONFIG_FILE, Checkpoint, CheckpointError, dtype_name};
use dera_lora::Adapter;
use serde_json::Value;

use crate::compute::float_size;
use crate::error::{MergeError, Result};
use crate::plan::TensorPlan;
use crate::spec::{MergeInputs, MergeOptions, VocabPolicy, coefficients};

/// The output head that tied checkpoints may omit.
pub(crate) const LM_HEAD: &str = "lm_head.weight";

/// Name endings of tensors with one row per vocabulary entry.
const VOCAB_SUFFIXES: &[&str] = &[
    "embed_tokens.weight",
    "wte.weight",
    "lm_head.weight",
    "embed_in.weight",
    "embed_out.weight",
    "word_embeddings.weight",
];

/// Inputs that passed every check, with the tensors to write in order.
pub(crate) struct Validated {
    /// Reference first, then the aligned checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// `[c_ref, c_1, ..., c_K]`.
    pub coefficients: Vec<f64>,
    /// Output tensors in the reference's file order.
    pub tensors: Vec<TensorPlan>,
    /// Tensors present in only some models and left out (a tied `lm_head.weight`).
    pub ignored: Vec<String>,
    /// The common vocabulary size when rows were truncated.
    pub vocab_size: Option<usize>,
    /// Temporary checkpoint folders holding GGUF inputs dequantized (removed when dropped).
    pub _scratch: Vec<dera_io::Temp>,
}

/// The input folders to read: each GGUF file is dequantized into a temporary checkpoint folder
/// (beside the output, or in the system's temporary directory for an in-memory merge), in f32,
/// or in the float type of the first safetensors input so that the two can be mixed.
fn gguf_as_checkpoints(
    inputs: &MergeInputs,
    out: Option<&Path>,
) -> Result<(Vec<std::path::PathBuf>, Vec<dera_io::Temp>)> {
    use dera_gguf::{ExportDtype, GgufModel, is_gguf_path};
    let mut dtype = ExportDtype::F32;
    if let Some(d) = inputs.dirs().find(|d| !is_gguf_path(d))
        && inputs.dirs().any(|d| is_gguf_path(d))
    {
        let ckpt = Checkpoint::open(d)?;
        let first_float = ckpt.names().find_map(|n| ckpt.raw(n).ok().map(|r| r.dtype));
        dtype = match first_float {
            Some(dera_checkpoint::Dtype::BF16) => ExportDtype::Bf16,
            Some(dera_checkpoint::Dtype::F16) => ExportDtype::F16,
            _ => ExportDtype::F32,
        };
    }
    let mut dirs = Vec::new();
    let mut scratch = Vec::new();
    for d in inputs.dirs() {
        if !is_gguf_path(d) {
            dirs.push(d.clone());
            continue;
        }
        let gguf_err = |e: dera_gguf::GgufError| CheckpointError::Gguf(e.to_string());
        let model = GgufModel::open(d).map_err(gguf_err)?;
        let beside = match out {
            Some(o) => o.to_path_buf(),
            None => std::env::temp_dir().join("dera-merge-input"),
        };
        let tmp = dera_io::Temp::dir_beside(&beside)?;
        dera_gguf::write_checkpoint(&model, tmp.path(), dtype).map_err(gguf_err)?;
        dirs.push(tmp.path().to_path_buf());
        scratch.push(tmp);
    }
    Ok((dirs, scratch))
}

/// Checks everything; `out` (when writing) must be free unless `force`.
pub(crate) fn validate(
    inputs: &MergeInputs,
    adapters: &[(&Adapter, f64)],
    out: Option<&Path>,
    options: &MergeOptions,
) -> Result<Validated> {
    if inputs.lambdas.len() != inputs.aligned.len() {
        return Err(MergeError::LambdaCount {
            lambdas: inputs.lambdas.len(),
            aligned: inputs.aligned.len(),
        });
    }
    let coefficients = coefficients(&inputs.lambdas)?;
    check_adapter_lambdas(adapters)?;
    if let Some(out) = out {
        check_output(inputs, adapters, out, options.force)?;
    }
    let (dirs, scratch) = gguf_as_checkpoints(inputs, out)?;
    let checkpoints = dirs
        .iter()
        .map(|d| Checkpoint::open(d))
        .collect::<Result<Vec<_>, _>>()?;
    let configs = checkpoints
        .iter()
        .map(Checkpoint::config)
        .collect::<Result<Vec<_>, _>>()?;
    for (ckpt, config) in checkpoints.iter().zip(&configs).skip(1) {
        for field in ["model_type", "architectures"] {
            let (a, b) = (configs[0].get(field), config.get(field));
            if a != b {
                let show = |v: Option<&Value>| v.map_or("<absent>".into(), Value::to_string);
                return Err(MergeError::Architecture {
                    field: field.into(),
                    reference: checkpoints[0].dir().join(CONFIG_FILE),
                    reference_value: show(a),
                    other: ckpt.dir().join(CONFIG_FILE),
                    other_value: show(b),
                });
            }
        }
    }
    let tied = configs.iter().any(ties_embeddings);
    let mut ignored = Vec::new();
    if tied
        && checkpoints.iter().any(|c| c.contains(LM_HEAD))
        && !checkpoints.iter().all(|c| c.contains(LM_HEAD))
    {
        ignored.push(LM_HEAD.to_string());
    }
    let keep = |name: &str| !ignored.iter().any(|i| i == name);
    check_names(&checkpoints, &keep)?;
    let (reference, others) = (&checkpoints[0], &checkpoints[1..]);

    let mut tensors = Vec::new();
    let mut min_rows: Option<usize> = None;
    let mut vocab_mismatch = false;
    for file in reference.files() {
        for name in file.names() {
            if !keep(&name) || reference.file_of(&name).map(|f| f.path()) != Some(file.path()) {
                continue;
            }
            let r = reference.raw(&name)?;
            let is_vocab = !r.shape.is_empty() && VOCAB_SUFFIXES.iter().any(|s| name.ends_with(s));
            if is_vocab {
                min_rows = Some(min_rows.map_or(r.shape[0], |m| m.min(r.shape[0])));
            }
            for other in others {
                let o = other.raw(&name)?;
                if o.dtype != r.dtype {
                    return Err(MergeError::Dtype {
                        name,
                        reference: reference.dir().into(),
                        reference_dtype: dtype_name(r.dtype),
                        other: other.dir().into(),
                        other_dtype: dtype_name(o.dtype),
                    });
                }
                if o.shape == r.shape {
                    if float_size(r.dtype).is_none() && o.bytes != r.bytes {
                        return Err(MergeError::NonFloat {
                            name,
                            dtype: dtype_name(r.dtype),
                            reference: reference.dir().into(),
                            other: other.dir().into(),
                        });
                    }
                    continue;
                }
                let rows_only =
                    is_vocab && o.shape.len() == r.shape.len() && o.shape[1..] == r.shape[1..];
                if !rows_only {
                    return Err(MergeError::Shape {
                        name,
                        reference: reference.dir().into(),
                        reference_shape: r.shape.to_vec(),
                        other: other.dir().into(),
                        other_shape: o.shape.to_vec(),
                    });
                }
                if options.vocab == VocabPolicy::Strict {
                    return Err(MergeError::Vocab {
                        name,
                        reference: reference.dir().into(),
                        reference_rows: r.shape[0],
                        other: other.dir().into(),
                        other_rows: o.shape[0],
                    });
                }
                vocab_mismatch = true;
                min_rows = min_rows.map(|m| m.min(o.shape[0]));
            }
            let merged = float_size(r.dtype).is_some();
            let out_dtype = match (merged, options.dtype) {
                (true, Some(d)) => d.dtype(),
                _ => r.dtype,
            };
            tensors.push(TensorPlan {
                shape: r.shape.to_vec(),
                name,
                dtype: r.dtype,
                out_dtype,
                merged,
                is_vocab,
            });
        }
    }
    let vocab_size = if vocab_mismatch { min_rows } else { None };
    if let Some(rows) = vocab_size {
        for t in tensors.iter_mut().filter(|t| t.is_vocab) {
            t.shape[0] = t.shape[0].min(rows);
        }
    }
    for (adapter, _) in adapters {
        adapter.check_against(&|name| reference.raw(name).ok().map(|r| r.shape.to_vec()))?;
        for module in adapter.modules.keys() {
            let name = format!("{module}.weight");
            let t = tensors.iter().find(|t| t.name == name);
            if let Some(t) = t.filter(|t| !t.merged || (t.is_vocab && vocab_size.is_some())) {
                return Err(MergeError::Adapter(dera_lora::LoraError::Module {
                    adapter: adapter.dir.clone(),
                    module: module.clone(),
                    reason: format!(
                        "{} cannot take a low-rank update here ({}{})",
                        t.name,
                        dtype_name(t.dtype),
                        if t.is_vocab {
                            ", vocabulary rows truncated"
                        } else {
                            ""
                        }
                    ),
                }));
            }
        }
    }
    Ok(Validated {
        _scratch: scratch,
        checkpoints,
        coefficients,
        tensors,
        ignored,
        vocab_size,
    })
}

/// Adapter lambdas must be finite and within [`dera_mix::MAX_COEFFICIENT`].
fn check_adapter_lambdas(adapters: &[(&Adapter, f64)]) -> Result<()> {
    let limit = dera_mix::MAX_COEFFICIENT;
    for (adapter, lambda) in adapters {
        let what = format!("the lambda of adapter {}", adapter.dir.display());
        if !lambda.is_finite() || lambda.abs() > limit {
            return Err(MergeError::CoefficientLimit {
                what,
                value: *lambda,
                limit,
            });
        }
    }
    Ok(())
}

/// Whether a config ties the output head to the input embedding (GPT-2 always does).
fn ties_embeddings(config: &Value) -> bool {
    config.get("model_type").and_then(Value::as_str) == Some("gpt2")
        || config
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false)
}

/// Every model must hold exactly the reference's tensor names (ignoring `keep == false`).
fn check_names(checkpoints: &[Checkpoint], keep: &dyn Fn(&str) -> bool) -> Result<()> {
    let reference = &checkpoints[0];
    let ref_names: BTreeSet<&str> = reference.names().filter(|n| keep(n)).collect();
    for other in &checkpoints[1..] {
        let missing =
            |name: &str, present: &Checkpoint, absent: &Checkpoint| MergeError::MissingTensor {
                name: name.to_string(),
                present: present.dir().into(),
                missing: absent.dir().into(),
            };
        if let Some(n) = ref_names.iter().find(|n| !other.contains(n)) {
            return Err(missing(n, reference, other));
        }
        if let Some(n) = other.names().find(|n| keep(n) && !ref_names.contains(n)) {
            return Err(missing(n, other, reference));
        }
    }
    Ok(())
}

/// The rule for outputs ([`dera_io::check_output`]): `out` is not an input, does not hold
/// one and is not inside one; an existing `out` needs `force` and must be a directory dera
/// wrote (or an empty one).
fn check_output(
    inputs: &MergeInputs,
    adapters: &[(&Adapter, f64)],
    out: &Path,
    force: bool,
) -> Result<()> {
    let dirs: Vec<&Path> = inputs
        .dirs()
        .map(|d| d.as_path())
        .chain(adapters.iter().map(|(a, _)| a.dir.as_path()))
        .collect();
    dera_io::check_output(out, dera_io::OutputKind::Dir, force, &dirs)?;
    Ok(())
}
