//! Harness for prompt and preference JSONL files, shared by the cargo-fuzz target and the
//! corpus replay test (`crates/dera-io/tests/fuzz_corpus.rs`).

use std::path::Path;

use dera_io::{LineLimits, read_lines_from};
use serde_json::Value;

/// Limits small enough for the fuzzer to reach.
pub const LIMITS: LineLimits = LineLimits {
    max_line_bytes: 4096,
    max_lines: 1000,
    max_total_bytes: 1 << 20,
};

/// Reads `data` as JSONL within [`LIMITS`], parses each line as the `generate --prompts` format
/// (`prompt`, optional `lambda` number or list) and mixes ordinary logits with any lambdas a
/// line carries: a mixture that is accepted must stay finite.
pub fn prompts_jsonl(data: &[u8]) {
    let Ok(lines) = read_lines_from(data, Path::new("prompts.jsonl"), LIMITS) else {
        return;
    };
    assert!(lines.len() <= LIMITS.max_lines);
    let mut last = 0;
    for (n, line) in lines {
        assert!(n > last && line.len() <= LIMITS.max_line_bytes && !line.contains('\n'));
        last = n;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let lambdas: Vec<f64> = match v.get("lambda") {
            Some(Value::Number(x)) => x.as_f64().into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
            _ => continue,
        };
        let Ok(mix) = dera_mix::Mixture::new(lambdas) else {
            continue;
        };
        // Logits as large as real ones get (|h| <= 1e4) never overflow an accepted mixture.
        let rows: Vec<Vec<f32>> = (0..=mix.num_aligned())
            .map(|j| vec![1e4, -1e4, j as f32])
            .collect();
        // The engine's mixer's arithmetic (dera_mix::mix_logits): f32 products of the f32
        // coefficients, accumulated reference first.
        let mut out = [0.0f32; 3];
        for (c, row) in mix.coefficients_f32().iter().zip(&rows) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o += c * x;
            }
        }
        assert!(
            out.iter().all(|x| x.is_finite()),
            "{:?} -> {out:?}",
            mix.lambdas()
        );
    }
}
