//! An adapter's matrices: reading, checking against the reference, low-rank products, writing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use dera_checkpoint::SafetensorsFile;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::LoraError;
use crate::config::{ADAPTER_CONFIG_FILE, AdapterConfig};

/// The adapter's weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The most tensors an adapter file may hold (two per adapted module).
pub const MAX_ADAPTER_TENSORS: usize = 1 << 16;

/// Values and shape of one tensor.
type Matrix = (Vec<f32>, Vec<usize>);

const PREFIX: &str = "base_model.model.";
const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";

/// The low-rank pair of one adapted linear layer, as `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// The rank.
    pub rank: usize,
    /// Input features of the layer.
    pub in_features: usize,
    /// Output features of the layer.
    pub out_features: usize,
    /// `A`, `[rank, in]` row-major.
    pub a: Vec<f32>,
    /// `B`, `[out, rank]` row-major.
    pub b: Vec<f32>,
}

impl LoraPair {
    /// Adds `scale * (B A)` to `acc`, which holds elements `start..start + acc.len()` of the
    /// layer's weight in its stored layout: `[out, in]`, or `[in, out]` when `transposed`
    /// (`fan_in_fan_out`). Sums run in `f32` over the rank in order.
    ///
    /// Panics if the range lies outside the weight (callers take it from a checked plan).
    pub fn add_delta(&self, scale: f32, transposed: bool, start: usize, acc: &mut [f32]) {
        let (r, n_in, n_out) = (self.rank, self.in_features, self.out_features);
        let cols = if transposed { n_out } else { n_in };
        assert!(
            start + acc.len() <= n_in * n_out,
            "delta range outside the weight"
        );
        let mut done = 0;
        while done < acc.len() {
            let idx = start + done;
            let (row, col) = (idx / cols, idx % cols);
            let len = (cols - col).min(acc.len() - done);
            let out = &mut acc[done..done + len];
            let mut tmp = vec![0f32; len];
            for k in 0..r {
                if transposed {
                    // stored [in, out]: element (j = row, o = col..)
                    let a = self.a[k * n_in + row];
                    for (t, o) in tmp.iter_mut().zip(col..col + len) {
                        *t += self.b[o * r + k] * a;
                    }
                } else {
                    // stored [out, in]: element (o = row, j = col..)
                    let b = self.b[row * r + k];
                    let a = &self.a[k * n_in + col..k * n_in + col + len];
                    for (t, &x) in tmp.iter_mut().zip(a) {
                        *t += b * x;
                    }
                }
            }
            for (o, t) in out.iter_mut().zip(tmp) {
                *o += scale * t;
            }
            done += len;
        }
    }

    /// `scale * B A` as `[out, in]`.
    pub fn delta(&self, scale: f32) -> Vec<f32> {
        let mut d = vec![0f32; self.in_features * self.out_features];
        self.add_delta(scale, false, 0, &mut d);
        d
    }
}

/// A LoRA adapter folder: its configuration and one [`LoraPair`] per adapted module.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The folder.
    pub dir: PathBuf,
    /// `adapter_config.json`.
    pub config: AdapterConfig,
    /// Adapted modules by name (`model.layers.0.self_attn.q_proj`), sorted.
    pub modules: BTreeMap<String, LoraPair>,
}

impl Adapter {
    /// Reads and validates the adapter in `dir`.
    ///
    /// Every tensor must be a `lora_A` / `lora_B` weight of a module that `target_modules`
    /// names (other tensors, such as DoRA magnitudes or `modules_to_save` copies, are refused
    /// by name), each module needs both, and the shapes must be `[r, in]` and `[out, r]`.
    pub fn open(dir: &Path) -> Result<Self, LoraError> {
        let config = AdapterConfig::from_dir(dir)?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !path.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                " (adapter_model.bin is a pickle; save the adapter with safe_serialization=True)"
            } else {
                ""
            };
            return Err(LoraError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("file not found{hint}"),
                ),
            ));
        }
        let file = SafetensorsFile::open(&path)?;
        let names = file.names();
        let terr = |tensor: &str, reason: String| LoraError::Tensor {
            path: path.clone(),
            tensor: tensor.to_string(),
            reason,
        };
        if names.len() > MAX_ADAPTER_TENSORS {
            return Err(terr(
                "(file)",
                format!("{} tensors, more than {MAX_ADAPTER_TENSORS}", names.len()),
            ));
        }
        let mut parts: BTreeMap<String, [Option<Matrix>; 2]> = BTreeMap::new();
        for name in &names {
            let (module, which) = match name.strip_prefix(PREFIX) {
                Some(rest) => match (rest.strip_suffix(A_SUFFIX), rest.strip_suffix(B_SUFFIX)) {
                    (Some(m), _) => (m, 0),
                    (_, Some(m)) => (m, 1),
                    _ => {
                        return Err(terr(name, unexpected(rest)));
                    }
                },
                None => {
                    return Err(terr(
                        name,
                        format!("does not start with {PREFIX:?} (not a PEFT LoRA adapter file)"),
                    ));
                }
            };
            if !config.targets(module) {
                return Err(terr(
                    name,
                    format!(
                        "module {module} is not among the target_modules of {ADAPTER_CONFIG_FILE}"
                    ),
                ));
            }
            let (values, shape) = file.read_f32(name)?;
            if shape.len() != 2 {
                return Err(terr(name, format!("shape {shape:?} is not a matrix")));
            }
            parts.entry(module.to_string()).or_default()[which] = Some((values, shape));
        }
        if parts.is_empty() {
            return Err(terr("(file)", "holds no lora_A / lora_B tensors".into()));
        }
        let r = config.r;
        let mut modules = BTreeMap::new();
        for (module, [a, b]) in parts {
            let missing = |which: &str| {
                terr(
                    &format!("{PREFIX}{module}.{which}.weight"),
                    "missing (every adapted module needs lora_A and lora_B)".into(),
                )
            };
            let (a, sa) = a.ok_or_else(|| missing("lora_A"))?;
            let (b, sb) = b.ok_or_else(|| missing("lora_B"))?;
            if sa[0] != r {
                return Err(terr(
                    &format!("{PREFIX}{module}{A_SUFFIX}"),
                    format!("shape {sa:?} has rank {} but r = {r} in the config", sa[0]),
                ));
            }
            if sb[1] != r {
                return Err(terr(
                    &format!("{PREFIX}{module}{B_SUFFIX}"),
                    format!("shape {sb:?} has rank {} but r = {r} in the config", sb[1]),
                ));
            }
            modules.insert(
                module,
                LoraPair {
                    rank: r,
                    in_features: sa[1],
                    out_features: sb[0],
                    a,
                    b,
                },
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            modules,
        })
    }

    /// The factor of the update ([`AdapterConfig::scale`]) as `f32`, as PEFT applies it.
    pub fn scale(&self) -> f32 {
        self.config.scale() as f32
    }

    /// Checks every module against the reference: `shape_of(name)` gives the shape of the
    /// reference tensor `name` (or `None` when absent). The base weight `<module>.weight`
    /// must be `[out, in]` (`[in, out]` with `fan_in_fan_out`).
    pub fn check_against(
        &self,
        shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<(), LoraError> {
        for (module, p) in &self.modules {
            let weight = format!("{module}.weight");
            let expected = if self.config.fan_in_fan_out {
                vec![p.in_features, p.out_features]
            } else {
                vec![p.out_features, p.in_features]
            };
            let merr = |reason: String| LoraError::Module {
                adapter: self.dir.clone(),
                module: module.clone(),
                reason,
            };
            match shape_of(&weight) {
                None => {
                    return Err(merr(format!(
                        "the reference has no tensor {weight} (an adapter for another model?)"
                    )));
                }
                Some(s) if s != expected => {
                    let layout = if self.config.fan_in_fan_out {
                        "[in, out] (fan_in_fan_out)"
                    } else {
                        "[out, in]"
                    };
                    return Err(merr(format!(
                        "lora_A {:?} and lora_B {:?} need the reference's {weight} to be {expected:?} {layout}, it is {s:?}",
                        [p.rank, p.in_features],
                        [p.out_features, p.rank],
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// This adapter with its update multiplied by `lambda` (`B` scaled; `A`, `r` and
    /// `lora_alpha` kept), so that base + result = base + `lambda * scale * B A`.
    pub fn scaled(&self, lambda: f32) -> Adapter {
        let mut out = self.clone();
        for p in out.modules.values_mut() {
            p.b.iter_mut().for_each(|x| *x *= lambda);
        }
        out
    }

    /// One adapter computing `sum_i lambda_i * scale_i * B_i A_i`: the ranks are stacked
    /// (`r = sum r_i`, `lora_alpha = r`, so the scale is 1) and each `B_i` is multiplied by
    /// `lambda_i * scale_i`; a module some adapters leave out gets zero blocks there. The
    /// result's `target_modules` lists the adapted modules by full name.
    pub fn stack(adapters: &[(&Adapter, f32)]) -> Result<Adapter, LoraError> {
        let Some((first, _)) = adapters.first() else {
            return Err(LoraError::Config {
                path: PathBuf::from(ADAPTER_CONFIG_FILE),
                field: "(adapters)".into(),
                reason: "no adapter to stack".into(),
            });
        };
        let fan = first.config.fan_in_fan_out;
        let mut shapes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (a, _) in adapters {
            if a.config.fan_in_fan_out != fan {
                return Err(LoraError::Config {
                    path: a.config.path.clone(),
                    field: "fan_in_fan_out".into(),
                    reason: "differs between the adapters being combined".into(),
                });
            }
            for (m, p) in &a.modules {
                let shape = (p.in_features, p.out_features);
                if *shapes.entry(m).or_insert(shape) != shape {
                    return Err(LoraError::Module {
                        adapter: a.dir.clone(),
                        module: m.clone(),
                        reason: "in/out features differ from another adapter's".into(),
                    });
                }
            }
        }
        let total: usize = adapters.iter().map(|(a, _)| a.config.r).sum();
        if total > crate::MAX_RANK {
            return Err(LoraError::Config {
                path: first.config.path.clone(),
                field: "r".into(),
                reason: format!("the stacked rank {total} exceeds {}", crate::MAX_RANK),
            });
        }
        let mut modules = BTreeMap::new();
        for (&m, &(n_in, n_out)) in &shapes {
            let mut a_all = vec![0f32; total * n_in];
            let mut b_all = vec![0f32; n_out * total];
            let mut at = 0;
            for (ad, lambda) in adapters {
                let r = ad.config.r;
                if let Some(p) = ad.modules.get(m) {
                    a_all[at * n_in..(at + r) * n_in].copy_from_slice(&p.a);
                    let f = lambda * ad.scale();
                    for o in 0..n_out {
                        for k in 0..r {
                            b_all[o * total + at + k] = f * p.b[o * r + k];
                        }
                    }
                }
                at += r;
            }
            modules.insert(
                m.to_string(),
                LoraPair {
                    rank: total,
                    in_features: n_in,
                    out_features: n_out,
                    a: a_all,
                    b: b_all,
                },
            );
        }
        let mut raw = first.config.raw.clone();
        if let Some(o) = raw.as_object_mut() {
            o.insert("r".into(), total.into());
            o.insert("lora_alpha".into(), total.into());
            o.insert("use_rslora".into(), false.into());
            let names: Vec<serde_json::Value> = shapes.keys().map(|m| (*m).into()).collect();
            o.insert("target_modules".into(), names.into());
            o.insert("rank_pattern".into(), serde_json::json!({}));
            o.insert("alpha_pattern".into(), serde_json::json!({}));
        }
        let config = crate::AdapterConfig::from_json(raw, &first.config.path)?;
        Ok(Adapter {
            dir: first.dir.clone(),
            config,
            modules,
        })
    }

    /// Writes the adapter as a PEFT folder (`adapter_config.json` as read, and
    /// `adapter_model.safetensors` in `f32`) to `out`, atomically through `dera-io`: `out` is
    /// never one of `inputs` (or inside one) and an existing `out` is replaced only with `force`.
    pub fn write(&self, out: &Path, force: bool, inputs: &[&Path]) -> Result<(), LoraError> {
        dera_io::check_output(out, dera_io::OutputKind::Dir, force, inputs)?;
        let tmp = dera_io::Temp::dir_beside(out)?;
        let cfg_path = tmp.path().join(ADAPTER_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.config.raw)
            .map_err(|e| LoraError::io(&cfg_path, std::io::Error::other(e.to_string())))?
            + "\n";
        std::fs::write(&cfg_path, text).map_err(|e| LoraError::io(&cfg_path, e))?;
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (m, p) in &self.modules {
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            data.push((
                format!("{PREFIX}{m}{A_SUFFIX}"),
                bytes(&p.a),
                vec![p.rank, p.in_features],
            ));
            data.push((
                format!("{PREFIX}{m}{B_SUFFIX}"),
                bytes(&p.b),
                vec![p.out_features, p.rank],
            ));
        }
        let path = tmp.path().join(ADAPTER_WEIGHTS_FILE);
        let views = data
            .iter()
            .map(|(n, b, s)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| LoraError::Tensor {
                        path: path.clone(),
                        tensor: n.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| LoraError::Tensor {
            path: path.clone(),
            tensor: "(file)".into(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, bytes).map_err(|e| LoraError::io(&path, e))?;
        dera_io::write_marker(tmp.path(), "dera merge --adapter-out")?;
        tmp.commit(out, force)?;
        Ok(())
    }
}

fn unexpected(rest: &str) -> String {
    if rest.ends_with(".lora_magnitude_vector") || rest.contains(".lora_magnitude_vector.") {
        "a DoRA magnitude vector: DoRA adapters are not supported yet".into()
    } else if rest.contains("lora_embedding_") {
        "a LoRA on an embedding: not supported yet".into()
    } else if rest.ends_with(".lora_B.bias") {
        "a trained lora_B bias: not supported yet".into()
    } else if rest.contains("modules_to_save") || !rest.contains("lora_") {
        "a module trained in full (modules_to_save): not supported yet".into()
    } else {
        "not a lora_A / lora_B weight".into()
    }
}
