//! Replays the committed GGUF fuzz corpus (`fuzz/corpus/gguf/*`) through the harness the
//! cargo-fuzz target runs (`fuzz/harness/gguf.rs`), without nightly.

use std::path::Path;

#[path = "../../../fuzz/harness/gguf.rs"]
mod gguf;

#[test]
fn gguf_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "corpus {} has seeds", dir.display());
    let tmp = tempfile::tempdir().unwrap();
    for path in files {
        eprintln!("{}", path.display());
        gguf::gguf_file(tmp.path(), &std::fs::read(&path).unwrap());
    }
}
