//! The `dera` binary on GGUF files (fixtures from `scripts/golden/generate_gguf.py`): a `.gguf`
//! file works wherever a checkpoint folder does.

mod common;
use common::{dera, fixtures, floats, max_diff, ok_json};

use serde_json::Value;

fn gguf(name: &str) -> String {
    fixtures()
        .join("gguf")
        .join(format!("{name}.gguf"))
        .display()
        .to_string()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("gguf/expected.json")).unwrap())
        .unwrap()
}

/// `dera logprobs` and `dera generate --greedy` on GGUF files equal transformers on them.
#[test]
fn logprobs_and_greedy_match_transformers() {
    let exp = expected();
    for name in [
        "llama_q8_0",
        "llama_q4_0_tied",
        "qwen2_mixed",
        "llama_spm",
        "llama_kquants",
        "llama_q5",
        "llama_q3_k",
        "llama_q2_k",
        "llama_iq4",
    ] {
        let p = &exp["models"][name]["prompts"][0];
        let text = p["text"].as_str().unwrap();
        let got = ok_json(&[
            "logprobs",
            "--ref",
            &gguf(name),
            "--prompt",
            text,
            "--format",
            "json",
        ]);
        assert_eq!(got["prompt_ids"], p["ids"], "{name}: prompt ids");
        let d = max_diff(
            &floats(&got["logprobs"]),
            &floats(&p["next_token_logprobs"]),
        );
        assert!(d <= 1e-3, "{name}: max |logprob diff| {d}");
        let n = p["greedy"].as_array().unwrap().len().to_string();
        let generated = ok_json(&[
            "generate",
            "--ref",
            &gguf(name),
            "--prompt",
            text,
            "--greedy",
            "--max-new-tokens",
            &n,
            "--format",
            "json",
        ]);
        assert_eq!(generated["tokens"], p["greedy"], "{name}: greedy tokens");
    }
}

/// `--chat` renders the template stored in the file's metadata.
#[test]
fn chat_uses_the_template_in_the_file() {
    let out = dera(&[
        "generate",
        "--ref",
        &gguf("llama_kquants"),
        "--prompt",
        "Hi",
        "--chat",
        "--greedy",
        "--max-new-tokens",
        "2",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // TEMPLATE_B: "{{ bos_token }}[USER] Hi\n[ASSISTANT]" -> starts with BOS id 1.
    let ids = v["prompt_ids"].as_array().unwrap();
    assert_eq!(ids[0], 1, "the template writes BOS: {v}");
    let plain = ok_json(&[
        "logprobs",
        "--ref",
        &gguf("llama_kquants"),
        "--prompt",
        "Hi",
        "--format",
        "json",
    ]);
    assert!(
        ids.len() > plain["prompt_ids"].as_array().unwrap().len() + 4,
        "{v}"
    );
}

/// `dera merge` reads GGUF inputs (dequantized, f32) and writes a checkpoint folder: a GGUF
/// reference mixed with a safetensors model of the same shape gives the GGUF model at lambda 0
/// (same log-probs, the GGUF's tokenizer) and the safetensors model's weights at lambda 1.
#[test]
fn merge_accepts_gguf_inputs() {
    use dera_checkpoint::Checkpoint;
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let golden_llama = fixtures().join("golden/models/llama");
    let p = &exp["models"]["llama_q8_0"]["prompts"][0];
    let text = p["text"].as_str().unwrap();
    for lambda in ["0", "1"] {
        let out = dir.path().join(format!("merged-{lambda}"));
        let o = out.to_str().unwrap();
        let res = dera(&[
            "merge",
            "--ref",
            &gguf("llama_q8_0"),
            "--aligned",
            golden_llama.to_str().unwrap(),
            "--lambda",
            lambda,
            "--out",
            o,
        ]);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert!(out.join("tokenizer.json").is_file() && out.join("config.json").is_file());
        if lambda == "0" {
            let merged = ok_json(&["logprobs", "--ref", o, "--prompt", text, "--format", "json"]);
            assert_eq!(merged["prompt_ids"], p["ids"], "the GGUF's tokenizer");
            let d = max_diff(
                &floats(&merged["logprobs"]),
                &floats(&p["next_token_logprobs"]),
            );
            assert!(d <= 1e-3, "lambda 0 vs transformers on the GGUF: {d}");
        } else {
            let (m, g) = (
                Checkpoint::open(&out).unwrap(),
                Checkpoint::open(&golden_llama).unwrap(),
            );
            let names: Vec<&str> = g.names().collect();
            assert!(!names.is_empty());
            for name in names {
                assert_eq!(
                    m.read_f32(name).unwrap(),
                    g.read_f32(name).unwrap(),
                    "{name}"
                );
            }
        }
    }
    // No temporary folders are left beside the output.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A corrupt GGUF file is an error naming the file, not a crash.
#[test]
fn corrupt_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    let bytes = std::fs::read(gguf("llama_q8_0")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let out = dera(&["logprobs", "--ref", bad.to_str().unwrap(), "--prompt", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.gguf") && err.contains("past the end"),
        "{err}"
    );
}

/// `dera check FILE.gguf` reports config, weights, finiteness, shapes, tokenizer and template.
#[test]
fn check_reads_gguf_files() {
    let v = ok_json(&["check", &gguf("qwen2_mixed"), "--format", "json"]);
    assert_eq!(v["problems"], 0, "{v}");
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for c in ["config", "weights", "finite", "shapes", "tokenizer", "chat"] {
        assert!(checks.contains(&c), "{c} missing: {v}");
    }
}
