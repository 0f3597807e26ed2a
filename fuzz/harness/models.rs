//! Harnesses for `config.json` parsing and chat-template rendering, shared by the cargo-fuzz
//! targets and the corpus replay test (`crates/dera/tests/fuzz_corpus.rs`).

use std::path::Path;

use dera::ChatTemplate;
use dera_models::{Architecture, ModelConfig};

/// Any bytes as `config.json`: a config that parses is one the model code can use.
pub fn config_json(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(c) = ModelConfig::from_json(&v, Path::new("config.json")) else {
        return;
    };
    assert!(
        c.norm_eps > 0.0 && c.norm_eps.is_finite(),
        "norm_eps {}",
        c.norm_eps
    );
    assert!(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0);
    assert!(c.vocab_size > 0 && c.hidden_size > 0 && c.num_layers > 0);
    if c.architecture != Architecture::Gpt2 {
        assert!(
            c.rope_theta > 0.0 && c.rope_theta.is_finite(),
            "rope_theta {}",
            c.rope_theta
        );
        assert!(c.head_dim % 2 == 0);
    }
}

/// `data` split at its first NUL into a chat template and a user message, rendered from a
/// `tokenizer_config.json` in `dir`. Must return (bounded by fuel) and never panic.
pub fn chat_template(dir: &Path, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (template, message) = text.split_once('\0').unwrap_or((&text, "Hello"));
    let cfg = serde_json::json!({
        "chat_template": template, "bos_token": "<s>", "eos_token": "</s>",
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).expect("write config");
    if let Ok(t) = ChatTemplate::from_dir(dir) {
        let _ = t.render_user(message);
        let _ = t.render(
            &[("system", "s"), ("user", message), ("assistant", "a")],
            false,
        );
    }
}
