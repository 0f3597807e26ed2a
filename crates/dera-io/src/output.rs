//! The rule for outputs: dera never deletes or overwrites anything it did not create.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::FileError;

/// The file a dera output directory carries: the JSON list of the files dera wrote there.
/// `--force` replaces a non-empty directory only when every entry in it is on that list.
pub const MARKER_FILE: &str = ".dera-output";

/// What an output path will hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One file (a sweep JSONL, a figure).
    File,
    /// A directory (a merged checkpoint).
    Dir,
}

/// `path` made absolute with symbolic links resolved, also when it does not exist yet: each
/// existing prefix is canonicalized and the missing rest appended (`.` dropped, `..` applied).
pub fn resolve(path: &Path) -> Result<PathBuf, FileError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| FileError::io(path, e))?
            .join(path)
    };
    let mut cur = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => cur.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(name) => {
                cur.push(name);
                if std::fs::symlink_metadata(&cur).is_ok() {
                    cur = cur.canonicalize().map_err(|e| FileError::io(path, e))?;
                }
            }
        }
    }
    Ok(cur)
}

/// Checks `out` against the rule for outputs before anything is computed or written:
///
/// - `out` is never one of `inputs`, an ancestor of one, or (for directory inputs) inside one,
///   with or without `force`;
/// - an existing `out` needs `force`, and must be of the right kind;
/// - an existing directory is replaced only when empty or written by dera ([`MARKER_FILE`]
///   lists everything in it).
pub fn check_output(
    out: &Path,
    kind: OutputKind,
    force: bool,
    inputs: &[&Path],
) -> Result<(), FileError> {
    if out.as_os_str().is_empty() {
        return Err(FileError::EmptyPath);
    }
    let target = resolve(out)?;
    for input in inputs {
        let Ok(inp) = input.canonicalize() else {
            continue; // a missing input is reported by whoever reads it; there is nothing to lose
        };
        if inp == target {
            return Err(FileError::IsInput {
                path: out.into(),
                input: input.to_path_buf(),
            });
        }
        if inp.starts_with(&target) {
            return Err(FileError::ContainsInput {
                path: out.into(),
                input: input.to_path_buf(),
            });
        }
        if inp.is_dir() && target.starts_with(&inp) {
            return Err(FileError::InsideInput {
                path: out.into(),
                input: input.to_path_buf(),
            });
        }
    }
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FileError::io(out, e)),
    };
    if !force {
        return Err(FileError::Exists { path: out.into() });
    }
    match kind {
        OutputKind::File => {
            // Only a regular file (or a link to one) is replaced: never a folder, a device
            // such as /dev/null, a pipe or a socket.
            if !std::fs::metadata(out).is_ok_and(|m| m.is_file()) {
                return Err(FileError::WrongKind {
                    path: out.into(),
                    expected: "regular file",
                });
            }
            Ok(())
        }
        OutputKind::Dir => {
            if meta.file_type().is_symlink() {
                return Err(FileError::NotDeraOutput {
                    path: out.into(),
                    reason: "is a symbolic link".into(),
                });
            }
            if !meta.is_dir() {
                return Err(FileError::WrongKind {
                    path: out.into(),
                    expected: "directory",
                });
            }
            replaceable_dir(out)
        }
    }
}

/// An existing directory may be replaced when it is empty or every entry is on its marker list.
fn replaceable_dir(dir: &Path) -> Result<(), FileError> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| FileError::io(dir, e))? {
        let e = e.map_err(|e| FileError::io(dir, e))?;
        entries.push(e.file_name().to_string_lossy().into_owned());
    }
    if entries.is_empty() {
        return Ok(());
    }
    let refuse = |reason: String| FileError::NotDeraOutput {
        path: dir.into(),
        reason,
    };
    let listed = read_marker(dir).ok_or_else(|| {
        refuse(format!(
            "holds {} entr{} and no {MARKER_FILE} marker, so dera did not write it",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" }
        ))
    })?;
    entries.sort();
    if let Some(extra) = entries
        .iter()
        .find(|e| e.as_str() != MARKER_FILE && !listed.contains(e.as_str()))
    {
        return Err(refuse(format!("holds `{extra}`, which dera did not write")));
    }
    Ok(())
}

fn read_marker(dir: &Path) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("files")?
        .as_array()?
        .iter()
        .map(|f| f.as_str().map(str::to_string))
        .collect()
}

/// Writes [`MARKER_FILE`] into `dir`, listing every entry `dir` holds now (call it last).
pub fn write_marker(dir: &Path, tool: &str) -> Result<(), FileError> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| FileError::io(dir, e))? {
        let e = e.map_err(|e| FileError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != MARKER_FILE {
            files.push(name);
        }
    }
    files.sort();
    let text = serde_json::json!({ "written_by": tool, "files": files }).to_string() + "\n";
    let path = dir.join(MARKER_FILE);
    std::fs::write(&path, text).map_err(|e| FileError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_handles_missing_tails_and_dots() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        assert_eq!(resolve(&d.path().join("a/b")).unwrap(), root.join("a/b"));
        assert_eq!(resolve(&d.path().join("a/../b")).unwrap(), root.join("b"));
        assert_eq!(resolve(&d.path().join("./c/.")).unwrap(), root.join("c"));
    }

    #[test]
    fn inputs_and_their_ancestors_are_never_outputs() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("models/sft");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let prompts = d.path().join("p.jsonl");
        std::fs::write(&prompts, "").unwrap();
        let inputs = [model.as_path(), prompts.as_path()];
        for force in [false, true] {
            let e = check_output(&model, OutputKind::Dir, force, &inputs).unwrap_err();
            assert!(matches!(e, FileError::IsInput { .. }), "{e}");
            let e = check_output(&d.path().join("models"), OutputKind::Dir, force, &inputs)
                .unwrap_err();
            assert!(matches!(e, FileError::ContainsInput { .. }), "{e}");
            let e = check_output(&model.join("config.json"), OutputKind::File, force, &inputs)
                .unwrap_err();
            assert!(matches!(e, FileError::InsideInput { .. }), "{e}");
            let e = check_output(&model.join("new.jsonl"), OutputKind::File, force, &inputs)
                .unwrap_err();
            assert!(matches!(e, FileError::InsideInput { .. }), "{e}");
            let e = check_output(&prompts, OutputKind::File, force, &inputs).unwrap_err();
            assert!(matches!(e, FileError::IsInput { .. }), "{e}");
            // The same file through `..` is still the input.
            let odd = model.join("../../p.jsonl");
            let e = check_output(&odd, OutputKind::File, force, &inputs).unwrap_err();
            assert!(matches!(e, FileError::IsInput { .. }), "{e}");
        }
        // A sibling is fine.
        check_output(
            &d.path().join("out.jsonl"),
            OutputKind::File,
            false,
            &inputs,
        )
        .unwrap();
    }

    #[test]
    fn existing_files_need_force() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out.jsonl");
        std::fs::write(&f, "x").unwrap();
        let e = check_output(&f, OutputKind::File, false, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "output {} already exists (pass --force to replace it)",
                f.display()
            )
        );
        check_output(&f, OutputKind::File, true, &[]).unwrap();
        let e = check_output(d.path(), OutputKind::File, true, &[]).unwrap_err();
        assert!(matches!(e, FileError::WrongKind { .. }), "{e}");
        let e = check_output(&f, OutputKind::Dir, true, &[]).unwrap_err();
        assert!(matches!(e, FileError::WrongKind { .. }), "{e}");
        // Devices are never replaced, even with force; nor is an empty path accepted.
        if Path::new("/dev/null").exists() {
            let e = check_output(Path::new("/dev/null"), OutputKind::File, true, &[]).unwrap_err();
            assert!(e.to_string().contains("is not a regular file"), "{e}");
        }
        let e = check_output(Path::new(""), OutputKind::File, true, &[]).unwrap_err();
        assert!(matches!(e, FileError::EmptyPath), "{e}");
    }

    #[test]
    fn force_replaces_only_empty_or_marked_directories() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("merged");
        std::fs::create_dir(&out).unwrap();
        check_output(&out, OutputKind::Dir, true, &[]).unwrap(); // empty
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = check_output(&out, OutputKind::Dir, true, &[]).unwrap_err();
        assert!(e.to_string().contains("no .dera-output marker"), "{e}");
        std::fs::remove_file(out.join("notes.txt")).unwrap();
        std::fs::write(out.join("model.safetensors"), "w").unwrap();
        write_marker(&out, "test").unwrap();
        check_output(&out, OutputKind::Dir, true, &[]).unwrap(); // dera's own
        std::fs::write(out.join("notes.txt"), "added later").unwrap();
        let e = check_output(&out, OutputKind::Dir, true, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("holds `notes.txt`, which dera did not write"),
            "{e}"
        );
        let e = check_output(&out, OutputKind::Dir, false, &[]).unwrap_err();
        assert!(matches!(e, FileError::Exists { .. }), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_an_input_is_the_input() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("sft");
        std::fs::create_dir(&model).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        let e = check_output(&link, OutputKind::Dir, true, &[&model]).unwrap_err();
        assert!(matches!(e, FileError::IsInput { .. }), "{e}");
        let other = d.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let link2 = d.path().join("link2");
        std::os::unix::fs::symlink(&other, &link2).unwrap();
        let e = check_output(&link2, OutputKind::Dir, true, &[&model]).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
