use std::path::Path;

use dera_checkpoint::{Checkpoint, CheckpointError};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn reads_single_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("model.safetensors"),
        &[("a", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
    );
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(
        c.read_f32("a").unwrap(),
        (vec![1.0, 2.0, 3.0, 4.0], vec![2, 2])
    );
    let err = c.read_f32_shaped("a", &[4]).unwrap_err().to_string();
    assert!(
        err.contains("tensor `a`") && err.contains("[2, 2]") && err.contains("[4]"),
        "{err}"
    );
    let err = c.read_f32("b").unwrap_err().to_string();
    assert!(err.contains("tensor `b` not found"), "{err}");
}

#[test]
fn reads_exactly_the_shards_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("s1.safetensors"),
        &[("a", vec![1], vec![1.0])],
    );
    write(
        &dir.path().join("s2.safetensors"),
        &[("b", vec![1], vec![2.0])],
    );
    // A stray file that the index does not name must be ignored.
    write(
        &dir.path().join("model.safetensors"),
        &[("zzz", vec![1], vec![9.0])],
    );
    let index = r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let c = Checkpoint::open(dir.path()).unwrap();
    assert!(c.is_sharded());
    assert_eq!(c.names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(c.read_f32("b").unwrap().0, [2.0]);
}

#[test]
fn missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("s1.safetensors"),
        &[("a", vec![1], vec![1.0])],
    );
    let index = r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::MissingFile { .. }));
    assert!(err.to_string().contains("s2.safetensors"), "{err}");
}

#[test]
fn truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write(&path, &[("a", vec![4], vec![1.0, 2.0, 3.0, 4.0])]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("invalid safetensors"),
        "{err}"
    );
    std::fs::write(&path, b"garbage").unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("invalid safetensors"), "{err}");
}

#[test]
fn missing_weights_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("no model.safetensors or model.safetensors.index.json"),
        "{err}"
    );
    let err = Checkpoint::open(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

/// An index may not name a shard outside its folder, even one that exists.
#[test]
fn shard_names_stay_inside_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpt");
    std::fs::create_dir(&dir).unwrap();
    let outside = root.path().join("x.safetensors");
    write(&outside, &[("a", vec![1], vec![1.0])]);
    std::fs::create_dir(dir.join("sub")).unwrap();
    write(&dir.join("sub/s.safetensors"), &[("a", vec![1], vec![1.0])]);
    let abs = outside.display().to_string();
    for (name, reason) in [
        ("../x.safetensors", "`..`"),
        ("sub/../../x.safetensors", "`..`"),
        (abs.as_str(), "absolute"),
        ("", "empty"),
        ("..\\x.safetensors", "backslash"),
    ] {
        let index = serde_json::json!({ "weight_map": { "a": name } }).to_string();
        std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
        let err = Checkpoint::open(&dir).unwrap_err();
        assert!(
            matches!(err, CheckpointError::ShardPath { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(reason), "{name}: {err}");
    }
    // A plain relative path inside the folder is fine.
    let index = r#"{"weight_map":{"a":"sub/s.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    assert_eq!(
        Checkpoint::open(&dir).unwrap().read_f32("a").unwrap().0,
        [1.0]
    );
}
