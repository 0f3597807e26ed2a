//! Any bytes as a safetensors file: header parsing, tensor views and f32 conversion.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/checkpoint.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("dera-fuzz-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    harness::safetensors_file(&dir, data);
});
