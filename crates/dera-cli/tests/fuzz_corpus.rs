//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the same harnesses the
//! cargo-fuzz targets run (`fuzz/harness`), so CI keeps every seed and every crash that was
//! ever found and fixed, without nightly.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/harness/checkpoint.rs"]
mod checkpoint;
#[path = "../../../fuzz/harness/models.rs"]
mod models;
#[path = "../../../fuzz/harness/prompts.rs"]
mod prompts;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[test]
fn safetensors_header_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    for (path, data) in corpus("safetensors_header") {
        eprintln!("{}", path.display());
        checkpoint::safetensors_file(tmp.path(), &data);
    }
}

#[test]
fn checkpoint_dir_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    for (path, data) in corpus("checkpoint_dir") {
        eprintln!("{}", path.display());
        checkpoint::checkpoint_dir(tmp.path(), &data);
    }
}

#[test]
fn prompts_jsonl_corpus() {
    for (path, data) in corpus("prompts_jsonl") {
        eprintln!("{}", path.display());
        prompts::prompts_jsonl(&data);
    }
}

#[test]
fn config_json_corpus() {
    for (path, data) in corpus("config_json") {
        eprintln!("{}", path.display());
        models::config_json(&data);
    }
}

#[test]
fn chat_template_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    for (path, data) in corpus("chat_template") {
        eprintln!("{}", path.display());
        models::chat_template(tmp.path(), &data);
    }
}
