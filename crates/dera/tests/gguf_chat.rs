//! Chat templates stored in GGUF metadata render as transformers renders them
//! (`tokenizer.apply_chat_template` after `AutoTokenizer.from_pretrained(dir, gguf_file=...)`).

use std::path::Path;

use dera::ChatTemplate;
use serde_json::Value;

#[test]
fn gguf_chat_template_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let messages: Vec<(&str, &str)> = expected["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let mut templates = std::collections::BTreeSet::new();
    for (name, case) in expected["models"].as_object().unwrap() {
        let path = dir.join(case["file"].as_str().unwrap());
        let rendered = ChatTemplate::from_dir(&path)
            .unwrap()
            .render(&messages, true)
            .unwrap();
        assert_eq!(rendered, case["chat"].as_str().unwrap(), "{name}");
        templates.insert(rendered);
    }
    assert!(
        templates.len() >= 3,
        "the fixtures use different templates and special tokens"
    );
}
