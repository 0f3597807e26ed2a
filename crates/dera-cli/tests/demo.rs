//! `dera demo` runs on the models embedded in the binary: from an empty folder, away from the
//! source tree, leaving nothing behind (also when interrupted).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `dera demo ARGS` in `cwd` with `$TMPDIR` set to `tmp`.
fn demo(cwd: &Path, tmp: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dera"))
        .arg("demo")
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", tmp)
        .output()
        .expect("run dera demo");
    assert!(
        out.status.success(),
        "dera demo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn demo_runs_from_an_empty_folder_on_the_embedded_models() {
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = demo(cwd.path(), tmp.path(), &["--samples", "2"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "reference: reference (embedded)", "{stdout}");
    assert_eq!(
        lines[1], "aligned:   aligned-length (embedded) (DPO, beta = 0.1, reward length:25-50)",
        "{stdout}"
    );
    // Two prompts shown at every lambda, each generation continuing its prompt.
    for prompt in ["A fool and", "The best way"] {
        let at = lines
            .iter()
            .position(|l| *l == format!("prompt: {prompt:?}"))
            .unwrap_or_else(|| panic!("no {prompt:?} in {stdout}"));
        for (i, lambda) in ["0", "0.5", "1", "2"].iter().enumerate() {
            let l = lines[at + 1 + i];
            assert!(
                l.starts_with(&format!("  lambda {lambda:<4} ["))
                    && l.contains(&format!("] {prompt}")),
                "{l:?} in {stdout}"
            );
        }
    }
    // The table: 4 prompts x 2 samples per lambda, KL 0 at lambda 0 and positive beyond.
    let t = lines
        .iter()
        .position(|l| *l == "4 prompts x 2 samples per lambda:")
        .unwrap_or_else(|| panic!("no table in {stdout}"));
    assert!(lines[t + 1].starts_with("lambdas"), "{stdout}");
    let rows = &lines[t + 2..];
    assert_eq!(rows.len(), 4, "{stdout}");
    for (row, lambda) in rows.iter().zip(["0", "0.5", "1", "2"]) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], lambda, "{row}");
        assert_eq!(cols[1], "8", "{row}");
        let kl: f64 = cols[4].split('±').next().unwrap().parse().unwrap();
        if lambda == "0" {
            assert!(kl.abs() < 0.005, "{row}");
        } else {
            assert!(kl > 0.0, "{row}");
        }
    }
    // Nothing written where it ran; the unpacked models are gone.
    assert!(entries(cwd.path()).is_empty(), "{:?}", entries(cwd.path()));
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));

    // The embedded models are the committed ones: the same generations and table.
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models");
    let out = demo(
        cwd.path(),
        tmp.path(),
        &[
            "--samples",
            "2",
            "--assets",
            &committed.display().to_string(),
        ],
    );
    let from_dir = String::from_utf8(out.stdout).unwrap();
    let body = |s: &str| s.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert!(from_dir.starts_with(&format!(
        "reference: {}",
        committed.join("reference").display()
    )));
    assert_eq!(body(&stdout), body(&from_dir));
}

#[test]
fn an_interrupted_demo_removes_its_unpacked_models() {
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dera"))
        .args(["demo", "--samples", "64"])
        .current_dir(cwd.path())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the models are unpacked (the prompts are written last), then interrupt.
    let start = Instant::now();
    let unpacked = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no unpacked models appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "the demo ended early");
        let found = entries(tmp.path())
            .into_iter()
            .find(|n| n.starts_with(".dera-assets.dera-tmp-"))
            .map(|n| tmp.path().join(n));
        if let Some(dir) = found.filter(|d| d.join("prompts.jsonl").is_file()) {
            break dir;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        unpacked
            .join("models/reference/model.safetensors")
            .is_file()
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    assert!(entries(cwd.path()).is_empty());
}
