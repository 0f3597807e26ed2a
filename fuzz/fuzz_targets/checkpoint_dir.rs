//! A sharded checkpoint from arbitrary bytes: index JSON, shard names (which must stay inside
//! the folder) and the shard itself.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/checkpoint.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("dera-fuzz-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    harness::checkpoint_dir(&dir, data);
});
