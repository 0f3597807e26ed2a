//! Prompt / preference JSONL read line by line within limits, and per-line lambdas mixed.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/prompts.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::prompts_jsonl(data));
