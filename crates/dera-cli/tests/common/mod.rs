//! Helpers shared by the end-to-end tests of the `dera` binary (each test file uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A path under `tests/fixtures`, as an argument.
pub fn fixture(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

/// Runs the built `dera` binary.
pub fn dera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dera"))
        .args(args)
        .output()
        .expect("run dera")
}

/// Runs `dera`, asserts success and returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = dera(args);
    assert!(
        out.status.success(),
        "dera {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `dera`, asserts success and parses its standard output as JSON.
pub fn ok_json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("JSON output")
}

/// Runs `dera`, asserts exit `code` and that standard error mentions `needle`.
pub fn fails(args: &[&str], code: i32, needle: &str) {
    let out = dera(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "dera {args:?}: {err}");
    assert!(
        err.contains(needle),
        "dera {args:?}: expected {needle:?} in: {err}"
    );
}

/// A JSON array of numbers.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

/// Largest absolute difference of two equally long vectors.
pub fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
