//! The embedded files are exactly the committed ones, and unpacking leaves nothing behind.

use std::path::{Path, PathBuf};

fn committed(dir: &Path, rel: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir.join(rel)).unwrap() {
        let e = e.unwrap();
        let name = format!("{rel}/{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            committed(dir, &name, out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn every_committed_model_file_and_the_prompts_are_embedded_unchanged() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut on_disk = Vec::new();
    committed(&root, "models", &mut on_disk);
    on_disk.push("prompts.jsonl".into());
    on_disk.sort();
    let mut embedded: Vec<String> = dera_assets::FILES
        .iter()
        .map(|a| a.path.to_string())
        .collect();
    embedded.sort();
    assert_eq!(embedded, on_disk);
    for a in &dera_assets::FILES {
        assert!(
            std::fs::read(root.join(a.path)).unwrap() == a.bytes,
            "{} differs from the committed file",
            a.path
        );
    }
    for (i, name) in dera_assets::MODEL_NAMES.iter().enumerate() {
        assert!(
            dera_assets::FILES[5 * i]
                .path
                .starts_with(&format!("models/{name}/"))
        );
    }
    assert_eq!(
        dera_assets::FONT,
        std::fs::read(root.join("fonts/DejaVuSans.ttf")).unwrap()
    );
}

#[test]
fn unpacking_writes_a_temporary_copy_and_removes_it() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("assets");
    // A leftover of a killed run (a PID above the kernel's pid_max) goes; the user's files stay.
    let stale = d.path().join(".assets.dera-tmp-99999999-0");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(d.path().join("mine.txt"), "user data").unwrap();
    let unpacked = dera_assets::unpack_beside(&dest).unwrap();
    let dir = unpacked.path().to_path_buf();
    assert_eq!(dir.parent(), Some(d.path()));
    assert!(!dest.exists(), "the destination itself is never written");
    if Path::new("/proc/self").exists() {
        assert!(!stale.exists());
    }
    for a in &dera_assets::FILES {
        assert_eq!(
            std::fs::read(dir.join(a.path)).unwrap(),
            a.bytes,
            "{}",
            a.path
        );
    }
    assert!(
        unpacked
            .models()
            .join("aligned-question/model.safetensors")
            .is_file()
    );
    assert!(unpacked.prompts().is_file());
    drop(unpacked);
    assert!(!dir.exists());
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["mine.txt"]);
}
