//! The signal handler's sweep, in its own test binary: it clears the process-wide registry,
//! which would pull temporaries from under tests running beside it.

use dera_io::{Temp, remove_registered};

#[test]
fn registered_temporaries_are_removed_on_request() {
    let d = tempfile::tempdir().unwrap();
    let dir = Temp::dir_beside(&d.path().join("merged")).unwrap();
    std::fs::write(dir.path().join("x"), "x").unwrap();
    let file = Temp::file_beside(&d.path().join("sweep.jsonl")).unwrap();
    let (p, q) = (dir.path().to_path_buf(), file.path().to_path_buf());
    assert!(p.exists() && q.exists());
    remove_registered();
    assert!(!p.exists() && !q.exists());
    drop(dir); // nothing left to remove: a no-op
    drop(file);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}
