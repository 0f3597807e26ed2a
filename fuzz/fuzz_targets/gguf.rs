//! Any bytes as a GGUF file: header, metadata, tensor infos, dequantization and the model view.
#![no_main]

#[path = "../harness/gguf.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("dera-fuzz-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    harness::gguf_file(&dir, data);
});
