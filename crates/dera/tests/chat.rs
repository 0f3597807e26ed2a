//! Chat templates render as transformers renders them.

use std::path::Path;

use dera::ChatTemplate;
use dera_models::Tokenizer;
use serde_json::Value;

#[test]
fn chat_template_matches_transformers() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden");
    for name in ["llama", "qwen2", "gpt2"] {
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(golden.join("expected").join(name).join("expected.json"))
                .unwrap(),
        )
        .unwrap();
        let chat = &expected["chat"];
        let messages: Vec<(&str, &str)> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let dir = golden.join("models").join(name);
        let rendered = ChatTemplate::from_dir(&dir)
            .unwrap()
            .render(&messages, chat["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap(), "{name}");
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let ids: Vec<u64> = tok
            .encode_with(&rendered, false)
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect();
        let want: Vec<u64> = chat["input_ids_no_special"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "{name}");
    }
}

#[test]
fn missing_template_is_a_clear_error() {
    let dir = tempfile_dir();
    let err = ChatTemplate::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("no chat_template"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dera-chat-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A template that would run for hours fails fast with a message instead.
#[test]
fn runaway_templates_are_stopped() {
    // Its own folder: `missing_template_is_a_clear_error` needs one without a config.
    let dir = tempfile_dir().join("runaway");
    std::fs::create_dir_all(&dir).unwrap();
    let tmpl = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({ "chat_template": tmpl }).to_string(),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let err = ChatTemplate::from_dir(&dir)
        .unwrap()
        .render_user("hi")
        .unwrap_err()
        .to_string();
    assert!(err.contains("fuel"), "{err}");
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}
