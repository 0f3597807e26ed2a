//! Harnesses for safetensors files and checkpoint directories, shared by the cargo-fuzz
//! targets and the corpus replay test (`crates/dera-checkpoint/tests/fuzz_corpus.rs`).
//! A harness may panic only on a broken property; bad input must come back as an error.

use std::path::Path;

use dera_checkpoint::{Checkpoint, SafetensorsFile, count_non_finite};

/// Any bytes as `model.safetensors` in `dir`: open, then view and convert every tensor.
pub fn safetensors_file(dir: &Path, data: &[u8]) {
    let path = dir.join("model.safetensors");
    std::fs::write(&path, data).expect("write the input");
    let Ok(file) = SafetensorsFile::open(&path) else {
        return;
    };
    for name in file.names() {
        let raw = file.get(&name).expect("a listed tensor is present");
        let elements = raw.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if let Some(count) = count_non_finite(raw.dtype, raw.bytes) {
            assert!(count.count <= elements.unwrap_or(usize::MAX));
        }
        if let Ok((values, shape)) = file.read_f32(&name) {
            assert_eq!(
                Some(values.len()),
                shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
            );
        }
    }
}

/// `data` split at its first NUL byte into a `model.safetensors.index.json` and one shard
/// `s.safetensors`, in `dir/ckpt`; `dir/outside.safetensors` is a valid file the index may try
/// to reach with `../`. A checkpoint that opens must only read files inside its folder.
pub fn checkpoint_dir(dir: &Path, data: &[u8]) {
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).expect("create the checkpoint folder");
    let outside = dir.join("outside.safetensors");
    if !outside.exists() {
        // {"a": F32 [1]} followed by its 4 bytes.
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        std::fs::write(&outside, bytes).expect("write the outside file");
    }
    let (index, shard) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    std::fs::write(ckpt.join("model.safetensors.index.json"), index).expect("write the index");
    std::fs::write(ckpt.join("s.safetensors"), shard).expect("write the shard");
    let Ok(c) = Checkpoint::open(&ckpt) else {
        return;
    };
    let root = ckpt.canonicalize().expect("canonical folder");
    for f in c.files() {
        let p = f.path().canonicalize().expect("an opened file exists");
        assert!(
            p.starts_with(&root),
            "read {} outside {}",
            p.display(),
            root.display()
        );
    }
    let names: Vec<String> = c.names().map(str::to_string).collect();
    for n in names {
        let _ = c.read_f32(&n);
    }
}
