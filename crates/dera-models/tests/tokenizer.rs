//! Tokenization as transformers does it, and streaming detokenisation.

use std::path::Path;

use dera_models::{ModelError, Tokenizer};

fn tokenizer(model: &str) -> Tokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/models")
        .join(model);
    Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap()
}

/// Multi-byte characters split over byte-level tokens are held back until complete.
#[test]
fn stream_never_emits_broken_utf8() {
    let tok = tokenizer("llama");
    let text = " café au lait, naïve façade — ok";
    let ids = tok.encode_with(text, false).unwrap();
    assert!(ids.len() > text.chars().count() / 2);
    let mut stream = tok.stream();
    let mut out = String::new();
    let mut held_back = 0;
    for &id in &ids {
        match stream.push(id).unwrap() {
            Some(piece) => {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "broken UTF-8 emitted: {piece:?}"
                );
                out.push_str(&piece);
            }
            None => held_back += 1,
        }
    }
    if let Some(rest) = stream.finish().unwrap() {
        out.push_str(&rest);
    }
    assert!(
        held_back > 0,
        "the multi-byte characters should have been held back at least once"
    );
    assert_eq!(out, tok.decode(&ids).unwrap());
    assert_eq!(out, text);
}

#[test]
fn special_tokens_follow_the_post_processor() {
    // Llama-style: BOS prepended; GPT-2-style: nothing added.
    let llama = tokenizer("llama");
    let gpt2 = tokenizer("gpt2");
    assert_eq!(
        llama.encode("Hello").unwrap()[0],
        llama.token_to_id("<s>").unwrap()
    );
    assert_eq!(
        gpt2.encode("Hello").unwrap(),
        gpt2.encode_with("Hello", false).unwrap()
    );
}

#[test]
fn corrupt_tokenizer_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{not json").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer { .. }));
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
