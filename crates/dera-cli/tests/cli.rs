//! End-to-end tests of the `dera` binary on the transformers golden fixtures.

mod common;
use common::{dera, fails, floats, max_diff, ok_json};

use std::path::{Path, PathBuf};

use serde_json::Value;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

fn model(name: &str) -> String {
    golden().join("models").join(name).display().to_string()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let z = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - z).collect()
}

/// `dera logprobs` equals transformers' log-softmax for every family and both config forms.
#[test]
fn logprobs_match_transformers() {
    for name in [
        "llama",
        "llama3_legacy",
        "qwen2",
        "gpt2",
        "llama_sharded",
        "llama_bf16",
    ] {
        let exp_dir = golden().join("expected").join(name);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(exp_dir.join("expected.json")).unwrap())
                .unwrap();
        let p = &expected["prompts"][0];
        let text = p["text"].as_str().unwrap();
        let got = ok_json(&[
            "logprobs",
            "--ref",
            &model(name),
            "--prompt",
            text,
            "--format",
            "json",
        ]);
        assert_eq!(got["prompt_ids"], p["prompt_ids"], "{name}: prompt ids");
        let file =
            dera_checkpoint::SafetensorsFile::open(&exp_dir.join("logits.safetensors")).unwrap();
        let (logits, shape) = file.read_f32(p["logits_tensor"].as_str().unwrap()).unwrap();
        let last = &logits[(shape[0] - 1) * shape[1]..];
        let d = max_diff(&floats(&got["logprobs"]), &log_softmax(last));
        assert!(d <= 1e-4, "{name}: max |logprob diff| {d}");
    }
}

#[test]
fn mixture_logprobs_and_greedy_generation_match_transformers() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(golden().join("expected/dera.json")).unwrap(),
    )
    .unwrap();
    let text = fx["prompt_text"].as_str().unwrap();
    for case in fx["llama_pair"]["cases"].as_array().unwrap() {
        let l = format!("{}", case["lambdas"][0].as_f64().unwrap());
        let base = [
            "--ref",
            &model("llama"),
            "--aligned",
            &model("llama_aligned_a"),
            "--lambda",
            &l,
            "--prompt",
            text,
        ];
        let got = ok_json(&[&["logprobs"], &base[..], &["--format", "json"]].concat());
        let d = max_diff(
            &floats(&got["logprobs"]),
            &floats(&case["next_token_logprobs"]),
        );
        assert!(d <= 1e-4, "lambda {l}: {d}");
        let generated = ok_json(
            &[
                &["generate"],
                &base[..],
                &["--greedy", "--max-new-tokens", "12", "--format", "json"],
            ]
            .concat(),
        );
        assert_eq!(generated["tokens"], case["greedy_new_ids"], "lambda {l}");
        for key in ["load_ms", "prefill_ms", "decode_ms_per_token"] {
            assert!(generated["timing"][key].as_f64().unwrap() >= 0.0);
        }
    }
    // Three models, lambdas summing past 1.
    let case = &fx["llama_three"]["cases"][0];
    let got = ok_json(&[
        "logprobs",
        "--ref",
        &model("llama"),
        "--aligned",
        &model("llama_aligned_a"),
        "--aligned",
        &model("llama_aligned_b"),
        "--lambda",
        "0.7,0.6",
        "--prompt",
        text,
        "--format",
        "json",
    ]);
    assert!(
        max_diff(
            &floats(&got["logprobs"]),
            &floats(&case["next_token_logprobs"])
        ) <= 1e-4
    );
}

#[test]
fn prompts_file_with_per_prompt_lambdas() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hello world\", \"lambda\": [0.0]}\n{\"prompt\": \"Hello world\", \"lambda\": [1.0]}\n").unwrap();
    let out = dera(&[
        "generate",
        "--ref",
        &model("llama"),
        "--aligned",
        &model("llama_aligned_a"),
        "--lambda",
        "0.5",
        "--prompts",
        prompts.to_str().unwrap(),
        "--greedy",
        "--max-new-tokens",
        "6",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["lambdas"], serde_json::json!([0.0]));
    assert_eq!(lines[1]["lambdas"], serde_json::json!([1.0]));
    // lambda 0 equals the reference alone.
    let alone = ok_json(&[
        "generate",
        "--ref",
        &model("llama"),
        "--prompt",
        "Hello world",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--format",
        "json",
    ]);
    assert_eq!(lines[0]["tokens"], alone["tokens"]);
}

#[test]
fn chat_flag_renders_the_template() {
    let plain = ok_json(&[
        "logprobs",
        "--ref",
        &model("llama"),
        "--prompt",
        "Hi",
        "--format",
        "json",
    ]);
    let chat = ok_json(&[
        "logprobs",
        "--ref",
        &model("llama"),
        "--prompt",
        "Hi",
        "--chat",
        "--format",
        "json",
    ]);
    assert!(
        chat["prompt_ids"].as_array().unwrap().len()
            > plain["prompt_ids"].as_array().unwrap().len() + 3
    );
    let d = broken_copy("llama");
    std::fs::remove_file(d.path().join("tokenizer_config.json")).unwrap();
    fails(
        &[
            "logprobs",
            "--ref",
            d.path().to_str().unwrap(),
            "--prompt",
            "Hi",
            "--chat",
        ],
        1,
        "chat_template",
    );
}

#[test]
fn score_reports_logprobs_and_kl() {
    let got = ok_json(&[
        "score",
        "--ref",
        &model("llama"),
        "--aligned",
        &model("llama_aligned_a"),
        "--lambda",
        "2",
        "--prompt",
        "Hello world",
        "--response",
        " the quick",
        "--format",
        "json",
    ]);
    let lp = floats(&got["token_logprobs"]);
    assert!(!lp.is_empty() && lp.iter().all(|x| *x <= 0.0));
    assert!(floats(&got["kl_to_reference"]).iter().all(|k| *k >= -1e-9));
}

/// Copies a fixture model into a temp dir so a test can break it.
fn broken_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(golden().join("models").join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_inputs_get_clear_errors() {
    let args = |dir: &str| {
        vec![
            "logprobs".to_string(),
            "--ref".into(),
            dir.to_string(),
            "--prompt".into(),
            "Hi".into(),
        ]
    };
    let run = |dir: &Path, code: i32, needle: &str| {
        let a = args(dir.to_str().unwrap());
        fails(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            code,
            needle,
        );
    };
    // Missing directory.
    run(Path::new("/nonexistent/model"), 1, "/nonexistent/model");
    // Unknown architecture.
    let d = broken_copy("llama");
    edit_config(d.path(), |v| {
        v["architectures"] = serde_json::json!(["BertForMaskedLM"])
    });
    run(d.path(), 1, "unsupported architecture");
    // Vocabulary mismatch between config and weights.
    let d = broken_copy("llama");
    edit_config(d.path(), |v| v["vocab_size"] = serde_json::json!(512));
    run(d.path(), 1, "vocabulary mismatch");
    // Mis-shaped tensor (intermediate size disagrees with the weights).
    let d = broken_copy("llama");
    edit_config(d.path(), |v| v["intermediate_size"] = serde_json::json!(96));
    run(d.path(), 1, "gate_proj.weight");
    // Missing tensor (a tied config whose head is untied: lm_head must exist).
    let d = broken_copy("qwen2");
    edit_config(d.path(), |v| {
        v["tie_word_embeddings"] = serde_json::json!(false)
    });
    run(d.path(), 1, "tensor `lm_head.weight` not found");
    // Truncated safetensors.
    let d = broken_copy("llama");
    let st = d.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    run(d.path(), 1, "model.safetensors");
    // Missing shard.
    let d = broken_copy("llama_sharded");
    std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).unwrap();
    run(d.path(), 1, "model-00002-of-00003.safetensors");
    // Missing tokenizer.
    let d = broken_copy("llama");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    run(d.path(), 1, "tokenizer.json");
    // Non-finite lambda, wrong lambda count, usage errors.
    let (r, a) = (model("llama"), model("llama_aligned_a"));
    fails(
        &[
            "logprobs",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--lambda",
            "nan",
            "--prompt",
            "x",
        ],
        2,
        "not a finite number",
    );
    fails(
        &[
            "logprobs",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--lambda",
            "0.5,0.5",
            "--prompt",
            "x",
        ],
        2,
        "one lambda per aligned model",
    );
    fails(&["logprobs", "--ref", &r], 2, "--prompt");
    for bad in ["1001", "nan", "abc"] {
        fails(
            &["serve", "--ref", &r, "--stream-interval-ms", bad],
            2,
            "give milliseconds from 0 to 1000",
        );
    }
    fails(
        &["generate", "--ref", &r, "--prompt", "x", "--device", "tpu"],
        2,
        "tpu",
    );
    fails(
        &["generate", "--ref", &r, "--prompt", "x", "--top-p", "1.5"],
        2,
        "top_p",
    );
}

#[test]
fn merge_matches_transformers_and_is_atomic() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(golden().join("expected/dera.json")).unwrap(),
    )
    .unwrap();
    let wm = &fx["weight_merge"];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let (r, a) = (model("llama"), model("llama_aligned_a"));
    let o = out.to_str().unwrap();
    let res = dera(&[
        "merge",
        "--ref",
        &r,
        "--aligned",
        &a,
        "--lambda",
        "0.5",
        "--out",
        o,
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let got = ok_json(&[
        "logprobs",
        "--ref",
        o,
        "--prompt",
        fx["prompt_text"].as_str().unwrap(),
        "--format",
        "json",
    ]);
    let d = max_diff(
        &floats(&got["logprobs"]),
        &floats(&wm["next_token_logprobs"]),
    );
    assert!(d <= 1e-4, "merged logprobs differ by {d}");
    // An existing output is not touched without --force.
    fails(
        &[
            "merge",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--lambda",
            "0.5",
            "--out",
            o,
        ],
        1,
        "exists",
    );
    // A bad input leaves no output behind.
    let bad = dir.path().join("bad");
    fails(
        &[
            "merge",
            "--ref",
            &r,
            "--aligned",
            &model("gpt2"),
            "--lambda",
            "0.5",
            "--out",
            bad.to_str().unwrap(),
        ],
        1,
        "",
    );
    assert!(!bad.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // Dry run writes nothing.
    let plan = dir.path().join("plan");
    let res = dera(&[
        "merge",
        "--ref",
        &r,
        "--aligned",
        &a,
        "--lambda",
        "0.5",
        "--out",
        plan.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(res.status.success() && !plan.exists());
}

#[test]
fn compare_reports_kl_and_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hello world\"}\n").unwrap();
    let got = ok_json(&[
        "compare",
        "--ref",
        &model("llama"),
        "--aligned",
        &model("llama_aligned_a"),
        "--lambda",
        "0.5",
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--format",
        "json",
    ]);
    let r = &got["results"][0];
    assert_eq!(
        r["kl_per_token"].as_array().unwrap().len(),
        r["tokens"].as_u64().unwrap() as usize
    );
    let agree = r["greedy_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agree));
    // At lambda = 0 both are the reference: zero KL, full agreement.
    let got = ok_json(&[
        "compare",
        "--ref",
        &model("llama"),
        "--aligned",
        &model("llama_aligned_a"),
        "--lambda",
        "0",
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--format",
        "json",
    ]);
    assert!(got["results"][0]["mean_kl"].as_f64().unwrap().abs() < 1e-6);
    assert_eq!(got["results"][0]["greedy_agreement"].as_f64().unwrap(), 1.0);
}
