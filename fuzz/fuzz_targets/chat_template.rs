//! Chat templates from arbitrary text, rendered with a user message.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/models.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("dera-fuzz-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    harness::chat_template(&dir, data);
});
