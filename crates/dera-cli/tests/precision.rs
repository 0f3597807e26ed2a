//! `--dtype` and `--quantize` through the binary: accepted on model commands, close to f32,
//! bad values are usage errors.

use std::path::PathBuf;
use std::process::Command;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/models")
        .join(name)
}

/// The full next-token log-probability vector printed by `dera logprobs --format json`.
fn logprobs(extra: &[&str]) -> Vec<f64> {
    let out = Command::new(env!("CARGO_BIN_EXE_dera"))
        .args(["logprobs", "--ref"])
        .arg(golden("llama"))
        .arg("--aligned")
        .arg(golden("llama_aligned_a"))
        .args([
            "--lambda",
            "1.5",
            "--prompt",
            "Hello world",
            "--format",
            "json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no `logprobs` in {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// KL(f32 || format) of the mixture's next-token distribution.
fn kl(base: &[f64], other: &[f64]) -> f64 {
    base.iter().zip(other).map(|(p, q)| p.exp() * (p - q)).sum()
}

/// Each format moves the mixture's next-token distribution by at most its tolerance (f32 not at
/// all beyond summation noise), in order of precision (Q4_1's minimum fits a block better than
/// Q4_0's symmetric grid); 4-bit blocks on a tiny random model move it the most.
#[test]
fn every_format_runs_and_stays_close_to_f32() {
    let base = logprobs(&[]);
    let mut last = 0.0;
    for (flags, tol) in [
        (&["--dtype", "f32"][..], 1e-9),
        (&["--dtype", "f16"][..], 1e-4),
        (&["--quantize", "q8_0"][..], 0.02),
        (&["--quantize", "q4_1"][..], 3.0),
        (&["--quantize", "q4_0"][..], 3.0),
    ] {
        let got = logprobs(flags);
        assert_eq!(got.len(), base.len());
        let d = kl(&base, &got);
        assert!(d.abs() <= tol, "{flags:?}: KL {d}");
        assert!(
            d >= last - 1e-9,
            "{flags:?}: KL {d} below the previous format's {last}"
        );
        last = d;
    }
    let d = kl(&base, &logprobs(&["--dtype", "bf16"]));
    assert!(d > 0.0 && d <= 2e-3, "bf16: KL {d}");
}

#[test]
fn bad_formats_are_usage_errors() {
    for flags in [["--dtype", "f64"], ["--quantize", "q3_k"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_dera"))
            .args(["logprobs", "--ref"])
            .arg(golden("llama"))
            .args(["--prompt", "Hi"])
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flags[1]), "{flags:?}: {err}");
    }
}
