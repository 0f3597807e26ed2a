//! Rendering a model's own chat template (`chat_template` in `tokenizer_config.json`).

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value;

use crate::DeraError;

/// Instructions a template may execute per render (minijinja fuel); real chat templates use
/// a few thousand.
const TEMPLATE_FUEL: u64 = 5_000_000;
/// Largest rendered prompt.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A Jinja chat template with the special tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Reads `chat_template` (a string, or the `default` entry of a list of named templates)
    /// from `dir/tokenizer_config.json`, falling back to `dir/chat_template.jinja`.
    ///
    /// `dir` may be a GGUF file: the template is `tokenizer.chat_template` in its metadata.
    pub fn from_dir(dir: &Path) -> Result<Self, DeraError> {
        if dera_models::is_gguf_path(dir) {
            return Self::from_gguf(dir);
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| DeraError::Chat(format!("{}: {e}", cfg_path.display())))?,
            Err(_) => Value::Null,
        };
        let token = |key: &str| -> String {
            match cfg.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        let source = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        };
        let source = match source {
            Some(s) => s,
            None => std::fs::read_to_string(dir.join("chat_template.jinja")).map_err(|_| {
                DeraError::Chat(format!(
                    "{} has no chat_template (and there is no chat_template.jinja): this model has no chat format",
                    cfg_path.display()
                ))
            })?,
        };
        Ok(Self {
            source,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        })
    }

    /// Reads `tokenizer.chat_template` and the BOS/EOS token texts from a GGUF file.
    pub fn from_gguf(path: &Path) -> Result<Self, DeraError> {
        let gguf =
            dera_models::GgufModel::open(path).map_err(|e| DeraError::Chat(e.to_string()))?;
        let source = gguf.chat_template().ok_or_else(|| {
            DeraError::Chat(format!(
                "{} has no tokenizer.chat_template: this model has no chat format",
                path.display()
            ))
        })?;
        Ok(Self {
            source: source.to_string(),
            bos_token: gguf.special_token("bos").unwrap_or_default().to_string(),
            eos_token: gguf.special_token("eos").unwrap_or_default().to_string(),
        })
    }

    /// Renders one user message followed by the assistant's generation prompt.
    pub fn render_user(&self, message: &str) -> Result<String, DeraError> {
        self.render(&[("user", message)], true)
    }

    /// Renders a conversation of `(role, content)` messages, as transformers'
    /// `apply_chat_template(messages, add_generation_prompt=...)`.
    pub fn render(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String, DeraError> {
        let mut env = Environment::new();
        // A template comes with the checkpoint: bound its work and output so that a hostile
        // or broken one fails with a message instead of running forever.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source)
            .map_err(|e| DeraError::Chat(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| DeraError::Chat(e.to_string()))?;
        let text = tmpl.render(context! {
            messages => messages.iter().map(|(role, content)| context! { role => role, content => content }).collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| DeraError::Chat(e.to_string()))?;
        if text.len() > MAX_RENDERED_BYTES {
            return Err(DeraError::Chat(format!(
                "the rendered prompt has {} bytes, more than {MAX_RENDERED_BYTES}",
                text.len()
            )));
        }
        Ok(text)
    }
}
