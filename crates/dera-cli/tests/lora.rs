//! `dera merge` / `logprobs` / `compare` with PEFT LoRA adapters, against transformers + peft
//! (`tests/fixtures/lora/expected.json`, written by `scripts/golden/generate_lora.py`).

mod common;
use common::{fails, fixture, fixtures, floats, max_diff, ok};

use std::path::Path;

use dera_models::{CausalLm, Device};
use serde_json::Value;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("lora/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn prompt() -> Vec<u32> {
    expected()["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Next-token log-probs after the fixture prompt of the checkpoint in `dir`, or of the
/// reference `dir` plus the adapter `adapter`.
fn logprobs(dir: &Path, adapter: Option<&Path>) -> Vec<f64> {
    let mut m = dera_models::load(dir, &Device::flex()).unwrap();
    if let Some(a) = adapter {
        m = dera_models::load_adapter(&m, a).unwrap();
    }
    let mut cache = m.model.new_cache();
    let out = m.model.forward(&prompt(), 1, &mut cache, false).unwrap();
    let v: Vec<f32> = out.try_into_vec_as::<f32>().unwrap();
    let mx = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = v.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx;
    v.iter().map(|&x| x as f64 - z).collect()
}

/// Every weight-space case (adapters of several ranks and targets, rslora, an adapter mixed
/// with a full checkpoint) written by `dera merge` gives the merged model's log-probs.
#[test]
fn merge_with_adapters_matches_peft() {
    let fx = expected();
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in fx["merges"].as_array().unwrap().iter().enumerate() {
        let out = tmp.path().join(format!("merged{i}"));
        let mut args = vec![
            "merge".to_string(),
            "--ref".into(),
            fixture(case["ref"].as_str().unwrap()),
        ];
        for a in case["aligned"].as_array().unwrap() {
            args.push("--aligned".into());
            args.push(fixture(a.as_str().unwrap()));
        }
        let lambdas: Vec<String> = floats(&case["lambdas"])
            .iter()
            .map(f64::to_string)
            .collect();
        args.extend(["--lambda".into(), lambdas.join(",")]);
        args.extend(["--out".into(), out.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = ok(&args);
        assert!(report.contains("adapter"), "{report}");
        let d = max_diff(&logprobs(&out, None), &floats(&case["next_token_logprobs"]));
        assert!(
            d <= 1e-4,
            "{}: merged log-probs differ by {d}",
            case["name"]
        );
        assert!(out.join(".dera-output").is_file());
    }
    // The output rule: an existing output needs --force.
    let out = tmp.path().join("merged0");
    fails(
        &[
            "merge",
            "--ref",
            &fixture("golden/models/llama"),
            "--aligned",
            &fixture("lora/adapters/llama_attn_r4"),
            "--lambda",
            "0.5",
            "--out",
            out.to_str().unwrap(),
        ],
        1,
        "--force",
    );
}

/// `--adapter-out` writes the adapter scaled by lambda: reference + that adapter is the
/// merged model (fixture at lambda 0.5); two adapters are stacked into one rank-6 adapter equal
/// to the merge of both.
#[test]
fn adapter_out_writes_the_scaled_adapter() {
    let fx = expected();
    let case = &fx["merges"][0];
    assert_eq!(case["name"], "llama_attn_r4");
    let tmp = tempfile::tempdir().unwrap();
    let scaled = tmp.path().join("scaled");
    let reference = fixtures().join("golden/models/llama");
    let r = reference.display().to_string();
    let attn = fixture("lora/adapters/llama_attn_r4");
    let mlp = fixture("lora/adapters/llama_mlp_r2");
    ok(&[
        "merge",
        "--ref",
        &r,
        "--aligned",
        &attn,
        "--lambda",
        "0.5",
        "--adapter-out",
        scaled.to_str().unwrap(),
    ]);
    assert!(scaled.join("adapter_config.json").is_file());
    let d = max_diff(
        &logprobs(&reference, Some(&scaled)),
        &floats(&case["next_token_logprobs"]),
    );
    assert!(
        d <= 1e-4,
        "reference + scaled adapter differs from the merge by {d}"
    );

    let stacked = tmp.path().join("stacked");
    let merged = tmp.path().join("merged");
    ok(&[
        "merge",
        "--ref",
        &r,
        "--aligned",
        &attn,
        "--aligned",
        &mlp,
        "--lambda",
        "0.5,-1.5",
        "--adapter-out",
        stacked.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(stacked.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 6);
    let d = max_diff(
        &logprobs(&reference, Some(&stacked)),
        &logprobs(&merged, None),
    );
    assert!(d <= 1e-4, "stacked adapter vs merge: {d}");
    let d = max_diff(&logprobs(&reference, None), &logprobs(&merged, None));
    assert!(d > 1e-3, "the merge changed nothing");

    // A full checkpoint cannot become an adapter.
    fails(
        &[
            "merge",
            "--ref",
            &r,
            "--aligned",
            &fixture("golden/models/llama_aligned_a"),
            "--lambda",
            "0.5",
            "--adapter-out",
            tmp.path().join("x").to_str().unwrap(),
        ],
        2,
        "full checkpoint",
    );
}

/// Unsupported adapters are refused with the field named; an adapter for another model names
/// the module.
#[test]
fn unsupported_adapters_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dora = tmp.path().join("dora");
    std::fs::create_dir(&dora).unwrap();
    let src = fixtures().join("lora/adapters/llama_attn_r4");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dora.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["use_dora"] = Value::Bool(true);
    std::fs::write(dora.join("adapter_config.json"), cfg.to_string()).unwrap();
    let out = tmp.path().join("out");
    let r = fixture("golden/models/llama");
    fails(
        &[
            "merge",
            "--ref",
            &r,
            "--aligned",
            dora.to_str().unwrap(),
            "--lambda",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        1,
        "use_dora",
    );
    assert!(!out.exists());
    fails(
        &[
            "logprobs",
            "--ref",
            &fixture("golden/models/gpt2"),
            "--aligned",
            &fixture("lora/adapters/llama_attn_r4"),
            "--lambda",
            "1",
            "--prompt",
            "Hello",
        ],
        1,
        "model.layers.0.self_attn",
    );
}

/// `dera logprobs` with an adapter folder as `--aligned` at lambda 1 is reference + adapter,
/// which is the merged model at lambda 1; and `dera compare` accepts adapters.
#[test]
fn logprobs_and_compare_take_adapter_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let r = fixture("golden/models/qwen2");
    let adapter = fixture("lora/adapters/qwen2_all_r16");
    let merged = tmp.path().join("merged");
    ok(&[
        "merge",
        "--ref",
        &r,
        "--aligned",
        &adapter,
        "--lambda",
        "1",
        "--out",
        merged.to_str().unwrap(),
    ]);
    let json = |s: String| -> Value { serde_json::from_str(&s).unwrap() };
    let mixed = json(ok(&[
        "logprobs",
        "--ref",
        &r,
        "--aligned",
        &adapter,
        "--lambda",
        "1",
        "--prompt",
        "Hello world",
        "--format",
        "json",
    ]));
    let single = json(ok(&[
        "logprobs",
        "--ref",
        merged.to_str().unwrap(),
        "--prompt",
        "Hello world",
        "--format",
        "json",
    ]));
    let d = max_diff(&floats(&mixed["logprobs"]), &floats(&single["logprobs"]));
    assert!(d <= 1e-4, "DeRa at lambda 1 vs merged: {d}");

    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hello world\"}\n").unwrap();
    let got = json(ok(&[
        "compare",
        "--ref",
        &r,
        "--aligned",
        &adapter,
        "--lambda",
        "1",
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--format",
        "json",
    ]));
    // At lambda 1 both sides are the same model: agreement, (almost) no KL.
    assert!(got["results"][0]["mean_kl"].as_f64().unwrap().abs() < 1e-5);
    assert_eq!(got["results"][0]["greedy_agreement"].as_f64().unwrap(), 1.0);
}
