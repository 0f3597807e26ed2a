//! Temporaries beside their destination, renamed into place on success, removed on failure,
//! on SIGINT/SIGTERM, and (when a run was killed outright) by the next run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::FileError;
use crate::output::{OutputKind, check_output};

/// What the signal handler does with a registered path.
#[derive(Debug, Clone)]
enum Action {
    /// A temporary: delete it.
    Remove(PathBuf),
    /// A previous output moved aside while its replacement is renamed in: put it back when
    /// the destination is empty, else delete it.
    Restore { backup: PathBuf, dest: PathBuf },
}

static REGISTRY: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Vec<(u64, Action)>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn register(action: Action) -> u64 {
    let id = COUNTER.fetch_add(1, Ordering::Relaxed);
    registry().push((id, action));
    id
}

fn deregister(id: u64) {
    registry().retain(|(i, _)| *i != id);
}

fn remove_path(path: &Path) {
    // A writer may still be creating files in a directory being removed: retry a few times.
    for _ in 0..5 {
        let gone = match std::fs::symlink_metadata(path) {
            Err(_) => return,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
        };
        if gone.is_ok() {
            return;
        }
    }
}

fn run(actions: &[(u64, Action)]) {
    for (_, a) in actions {
        if let Action::Remove(p) = a {
            remove_path(p);
        }
    }
    for (_, a) in actions {
        if let Action::Restore { backup, dest } = a {
            if std::fs::symlink_metadata(dest).is_err() {
                let _ = std::fs::rename(backup, dest);
            } else {
                remove_path(backup);
            }
        }
    }
}

/// Removes every live temporary of this process now (and puts back an output that was moved
/// aside mid-replacement). The signal handler calls it; tests may too.
pub fn remove_registered() {
    let mut reg = registry();
    run(&reg);
    reg.clear();
}

/// Installs a SIGINT/SIGTERM/SIGHUP handler that removes this process's temporaries and exits
/// with status 130. Call it once at start-up; a second call is a no-op.
pub fn install_signal_cleanup() {
    let _ = ctrlc::set_handler(|| {
        // Hold the registry while exiting so that no new temporary appears after the sweep.
        let reg = registry();
        run(&reg);
        eprintln!("interrupted: temporary outputs removed");
        std::process::exit(130);
    });
}

/// `.NAME.dera-KIND-PID-N[.EXT]`: hidden, unique, and naming the process that made it.
fn temp_name(dest: &Path, kind: &str) -> (PathBuf, String) {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The extension is kept: some writers (the PNG encoder) choose the format from it.
    let ext = dest
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let file = format!(".{name}.dera-{kind}-{}-{n}{ext}", std::process::id());
    (parent.join(&file), name)
}

/// Whether process `pid` may still be running (`true` when it cannot be told).
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Removes the temporaries that killed dera runs left beside `dest` (their PID is no longer
/// running); an output moved aside mid-replacement is put back when `dest` is missing.
/// Returns what it removed or restored.
pub fn clean_stale(dest: &Path) -> Vec<PathBuf> {
    let (probe, name) = temp_name(dest, "tmp");
    let Some(parent) = probe.parent() else {
        return Vec::new();
    };
    let prefix = format!(".{name}.dera-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut cleaned = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let (kind, rest) = match rest.split_once('-') {
            Some((k @ ("tmp" | "old"), r)) => (k, r),
            _ => continue,
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let path = e.path();
        if kind == "old" && std::fs::symlink_metadata(dest).is_err() {
            if std::fs::rename(&path, dest).is_ok() {
                cleaned.push(path);
            }
            continue;
        }
        remove_path(&path);
        if std::fs::symlink_metadata(&path).is_err() {
            cleaned.push(path);
        }
    }
    cleaned
}

/// A temporary file or directory beside its destination: renamed over the destination by
/// [`Temp::commit`], removed when dropped uncommitted, and registered for
/// [`install_signal_cleanup`] while it lives.
#[derive(Debug)]
pub struct Temp {
    path: PathBuf,
    id: Option<u64>,
}

impl Temp {
    /// Reserves an empty temporary file beside `dest` (creating `dest`'s parent directories),
    /// after removing what killed runs left there.
    pub fn file_beside(dest: &Path) -> Result<Self, FileError> {
        Self::beside(dest, false)
    }

    /// Creates an empty temporary directory beside `dest`, as [`Temp::file_beside`].
    pub fn dir_beside(dest: &Path) -> Result<Self, FileError> {
        Self::beside(dest, true)
    }

    fn beside(dest: &Path, dir: bool) -> Result<Self, FileError> {
        let parent = temp_name(dest, "tmp").0.parent().map(Path::to_path_buf);
        if let Some(p) = &parent {
            std::fs::create_dir_all(p).map_err(|e| FileError::io(p, e))?;
        }
        clean_stale(dest);
        loop {
            let (path, _) = temp_name(dest, "tmp");
            let made = if dir {
                std::fs::create_dir(&path)
            } else {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map(drop)
            };
            match made {
                Ok(()) => {
                    let id = register(Action::Remove(path.clone()));
                    return Ok(Self { path, id: Some(id) });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FileError::io(&path, e)),
            }
        }
    }

    /// The temporary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temporary to `dest`. An existing `dest` is replaced only with `force`, and
    /// (for a directory) only when [`check_output`] allows it; a replaced directory is moved
    /// aside first and deleted only once the new one is in place.
    pub fn commit(mut self, dest: &Path, force: bool) -> Result<(), FileError> {
        let is_dir = self.path.is_dir();
        let kind = if is_dir {
            OutputKind::Dir
        } else {
            OutputKind::File
        };
        check_output(dest, kind, force, &[])?;
        let exists = std::fs::symlink_metadata(dest).is_ok();
        if !is_dir || !exists {
            std::fs::rename(&self.path, dest).map_err(|e| FileError::io(dest, e))?;
            self.disarm();
            return Ok(());
        }
        let (backup, _) = temp_name(dest, "old");
        std::fs::rename(dest, &backup).map_err(|e| FileError::io(dest, e))?;
        let restore = register(Action::Restore {
            backup: backup.clone(),
            dest: dest.to_path_buf(),
        });
        if let Err(e) = std::fs::rename(&self.path, dest) {
            let _ = std::fs::rename(&backup, dest);
            deregister(restore);
            return Err(FileError::io(dest, e));
        }
        self.disarm();
        let removed = std::fs::remove_dir_all(&backup).map_err(|e| FileError::io(&backup, e));
        deregister(restore);
        removed
    }

    fn disarm(&mut self) {
        if let Some(id) = self.id.take() {
            deregister(id);
        }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            remove_path(&self.path);
            deregister(id);
        }
    }
}

/// Writes `bytes` to `dest` atomically: a temporary beside it, synced, then renamed. An
/// existing `dest` is replaced only with `force`; on any error nothing is left behind.
pub fn write_file(dest: &Path, bytes: &[u8], force: bool) -> Result<(), FileError> {
    let tmp = Temp::file_beside(dest)?;
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(tmp.path())
        .map_err(|e| FileError::io(tmp.path(), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| FileError::io(tmp.path(), e))?;
    drop(f);
    tmp.commit(dest, force)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_file_is_atomic_and_respects_force() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sub/out.jsonl");
        write_file(&f, b"one", false).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"one");
        let e = write_file(&f, b"two", false).unwrap_err();
        assert!(matches!(e, FileError::Exists { .. }), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"one");
        write_file(&f, b"two", true).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(names(&d.path().join("sub")), ["out.jsonl"]);
    }

    #[test]
    fn dropped_temporaries_vanish_and_keep_the_extension() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("fig.png");
        let t = Temp::file_beside(&dest).unwrap();
        assert!(t.path().to_string_lossy().ends_with(".png"));
        assert!(t.path().exists());
        drop(t);
        assert!(names(d.path()).is_empty());
        let t = Temp::dir_beside(&d.path().join("merged")).unwrap();
        std::fs::write(t.path().join("x"), "x").unwrap();
        drop(t);
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn directories_replace_only_dera_outputs() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("merged");
        let t = Temp::dir_beside(&dest).unwrap();
        std::fs::write(t.path().join("a"), "1").unwrap();
        crate::write_marker(t.path(), "test").unwrap();
        t.commit(&dest, false).unwrap();
        let t = Temp::dir_beside(&dest).unwrap();
        std::fs::write(t.path().join("b"), "2").unwrap();
        let e = Temp::commit(t, &dest, false).unwrap_err();
        assert!(matches!(e, FileError::Exists { .. }));
        let t = Temp::dir_beside(&dest).unwrap();
        std::fs::write(t.path().join("b"), "2").unwrap();
        t.commit(&dest, true).unwrap();
        assert_eq!(names(&dest), ["b"]);
        assert_eq!(names(d.path()), ["merged"]);
        // Not marked any more (the new one has no marker): force refuses.
        let t = Temp::dir_beside(&dest).unwrap();
        let e = t.commit(&dest, true).unwrap_err();
        assert!(matches!(e, FileError::NotDeraOutput { .. }), "{e}");
        assert_eq!(names(d.path()), ["merged"]);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_cleaned() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("merged");
        // A PID that cannot be running: above the kernel's pid_max (at most 2^22).
        let dead = 99_999_999u32;
        let stale = d.path().join(format!(".merged.dera-tmp-{dead}-0"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("model.safetensors"), "partial").unwrap();
        let live = d
            .path()
            .join(format!(".merged.dera-tmp-{}-7", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        // An old output moved aside by a killed replacement comes back.
        let old = d.path().join(format!(".merged.dera-old-{dead}-1"));
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("config.json"), "{}").unwrap();
        let other = d.path().join(format!(".other.dera-tmp-{dead}-0"));
        std::fs::write(&other, "").unwrap();
        let cleaned = clean_stale(&dest);
        assert_eq!(cleaned.len(), 2, "{cleaned:?}");
        assert!(!stale.exists() && live.exists() && other.exists());
        assert!(dest.join("config.json").exists());
    }
}
