//! `adapter_config.json`: what dera reads from it and what it refuses.

use std::io::Read;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

use crate::LoraError;

/// The adapter's configuration file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// The largest rank accepted (far above any published adapter; bounds allocations).
pub const MAX_RANK: usize = 1 << 16;

/// The largest `adapter_config.json` read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Whether `dir` is a PEFT adapter folder (it holds `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file()
}

/// Which modules an adapter targets, with PEFT's matching rules.
#[derive(Debug, Clone)]
pub enum TargetModules {
    /// Module names: a module matches when its name equals one or ends with `.` + one.
    Names(Vec<String>),
    /// A regular expression that must match the whole module name (`re.fullmatch`).
    Regex(Regex),
    /// PEFT's `"all-linear"`: every linear layer except the output head.
    AllLinear,
}

impl TargetModules {
    /// Whether the module `name` (`model.layers.0.self_attn.q_proj`) is targeted.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            TargetModules::Names(names) => names.iter().any(|t| ends_with_module(name, t)),
            TargetModules::Regex(re) => re.is_match(name),
            TargetModules::AllLinear => !name.ends_with("lm_head"),
        }
    }
}

/// PEFT's list rule: `key == target or key.endswith("." + target)`.
fn ends_with_module(name: &str, target: &str) -> bool {
    name == target
        || name
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// The settings of a LoRA adapter that dera computes with.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// The rank `r`.
    pub r: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `use_rslora`: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// `target_modules`.
    pub target_modules: TargetModules,
    /// `exclude_modules`, with the same matching rules, when given.
    pub exclude_modules: Option<TargetModules>,
    /// `fan_in_fan_out`: the base layer stores its weight `[in, out]` (GPT-2's `Conv1D`).
    pub fan_in_fan_out: bool,
    /// `base_model_name_or_path`, as written by PEFT (informational).
    pub base_model: Option<String>,
    /// The whole file, kept so that a scaled copy of the adapter keeps every field.
    pub raw: Value,
}

impl AdapterConfig {
    /// Reads `dir/adapter_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, LoraError> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let file = std::fs::File::open(&path).map_err(|e| LoraError::io(&path, e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| LoraError::io(&path, e))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(LoraError::Config {
                path,
                field: "(file)".into(),
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| LoraError::Config {
            path: path.clone(),
            field: "(file)".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(value, &path)
    }

    /// Interprets a parsed `adapter_config.json`; `path` names it in errors.
    pub fn from_json(raw: Value, path: &Path) -> Result<Self, LoraError> {
        let err = |field: &str, reason: String| LoraError::Config {
            path: path.to_path_buf(),
            field: field.into(),
            reason,
        };
        let obj = raw
            .as_object()
            .ok_or_else(|| err("(file)", "not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") | None => {}
            Some(other) => {
                return Err(err(
                    "peft_type",
                    format!("{other:?} adapters are not supported (only LORA)"),
                ));
            }
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("r", "missing or not a positive integer".into()))?;
        if r == 0 || r > MAX_RANK as u64 {
            return Err(err("r", format!("{r} is outside 1..={MAX_RANK}")));
        }
        let r = r as usize;
        let lora_alpha = match get("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(v) => v
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| err("lora_alpha", format!("{v} is not a finite number")))?,
        };
        let flag = |k: &str| -> Result<bool, LoraError> {
            match get(k) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(err(k, format!("{v} is not true or false"))),
            }
        };
        let use_rslora = flag("use_rslora")?;
        let fan_in_fan_out = flag("fan_in_fan_out")?;
        if flag("use_dora")? {
            return Err(err(
                "use_dora",
                "DoRA adapters are not supported yet (the magnitude vector changes the layer)"
                    .into(),
            ));
        }
        if flag("lora_bias")? {
            return Err(err(
                "lora_bias",
                "adapters with a trained bias on lora_B are not supported yet".into(),
            ));
        }
        match get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(other) => {
                return Err(err(
                    "bias",
                    format!("{other:?} is not supported yet (only \"none\")"),
                ));
            }
        }
        let non_empty = |k: &str| match get(k) {
            None => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        for (k, what) in [
            (
                "modules_to_save",
                "modules trained in full (modules_to_save) are not supported yet",
            ),
            (
                "rank_pattern",
                "per-module ranks (rank_pattern) are not supported yet",
            ),
            (
                "alpha_pattern",
                "per-module alphas (alpha_pattern) are not supported yet",
            ),
            (
                "layer_replication",
                "layer replication is not supported yet",
            ),
            (
                "trainable_token_indices",
                "trainable token embeddings are not supported yet",
            ),
            (
                "target_parameters",
                "adapters on parameters (target_parameters) are not supported yet",
            ),
        ] {
            if non_empty(k) {
                return Err(err(k, what.into()));
            }
        }
        let target_modules = modules(get("target_modules"), "target_modules", path)?
            .ok_or_else(|| err("target_modules", "missing".into()))?;
        let exclude_modules = modules(get("exclude_modules"), "exclude_modules", path)?;
        let base_model = get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Self {
            path: path.to_path_buf(),
            r,
            lora_alpha,
            use_rslora,
            target_modules,
            exclude_modules,
            fan_in_fan_out,
            base_model,
            raw,
        })
    }

    /// The factor of the low-rank update: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with
    /// `use_rslora`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Whether PEFT would adapt the module `name`.
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules.matches(name)
            && !self
                .exclude_modules
                .as_ref()
                .is_some_and(|e| e.matches(name))
    }
}

fn modules(
    v: Option<&Value>,
    field: &str,
    path: &Path,
) -> Result<Option<TargetModules>, LoraError> {
    let err = |reason: String| LoraError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        reason,
    };
    Ok(match v {
        None => None,
        Some(Value::String(s)) if s == "all-linear" => Some(TargetModules::AllLinear),
        Some(Value::String(s)) => {
            let re = Regex::new(&format!("^(?:{s})$"))
                .map_err(|e| err(format!("{s:?} is not a regular expression dera reads: {e}")))?;
            Some(TargetModules::Regex(re))
        }
        Some(Value::Array(a)) => {
            let names = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("{x} is not a module name")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(TargetModules::Names(names))
        }
        Some(other) => {
            return Err(err(format!(
                "{other} is neither a list of names nor a regex"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<AdapterConfig, LoraError> {
        AdapterConfig::from_json(v, Path::new("a/adapter_config.json"))
    }

    fn base() -> Value {
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
               "bias": "none", "use_dora": false, "modules_to_save": null, "rank_pattern": {},
               "alpha_pattern": {}, "fan_in_fan_out": false, "use_rslora": false})
    }

    #[test]
    fn scale_and_matching_follow_peft() {
        let c = parse(base()).unwrap();
        assert_eq!(c.scale(), 2.0);
        assert!(c.targets("model.layers.0.self_attn.q_proj"));
        assert!(c.targets("q_proj"));
        assert!(!c.targets("model.layers.0.self_attn.qq_proj"));
        assert!(!c.targets("model.layers.0.self_attn.k_proj"));
        let mut v = base();
        v["use_rslora"] = json!(true);
        v["r"] = json!(4);
        assert_eq!(parse(v).unwrap().scale(), 8.0);
        let mut v = base();
        v["target_modules"] = json!(r".*\.layers\.1\..*(q|k)_proj");
        let c = parse(v).unwrap();
        assert!(c.targets("model.layers.1.self_attn.k_proj"));
        assert!(!c.targets("model.layers.0.self_attn.k_proj"));
        assert!(
            !c.targets("model.layers.1.self_attn.k_proj.extra"),
            "fullmatch"
        );
        let mut v = base();
        v["exclude_modules"] = json!(["model.layers.0.self_attn.q_proj"]);
        let c = parse(v).unwrap();
        assert!(!c.targets("model.layers.0.self_attn.q_proj"));
        assert!(c.targets("model.layers.1.self_attn.q_proj"));
    }

    #[test]
    fn unsupported_settings_are_refused_by_name() {
        for (k, v) in [
            ("use_dora", json!(true)),
            ("modules_to_save", json!(["lm_head"])),
            ("bias", json!("all")),
            ("bias", json!("lora_only")),
            ("rank_pattern", json!({"q_proj": 4})),
            ("alpha_pattern", json!({"q_proj": 4})),
            ("lora_bias", json!(true)),
            ("peft_type", json!("IA3")),
            ("r", json!(0)),
            ("r", json!(-3)),
            ("lora_alpha", json!("x")),
            ("target_modules", json!(7)),
            ("target_modules", json!("(")),
        ] {
            let mut c = base();
            c[k] = v.clone();
            let e = parse(c).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        let mut c = base();
        c.as_object_mut().unwrap().remove("target_modules");
        assert!(parse(c).unwrap_err().to_string().contains("target_modules"));
    }
}
