//! Any bytes as `config.json`: parsing and the sanity of what is accepted.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/models.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config_json(data));
