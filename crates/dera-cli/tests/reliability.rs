//! The bad-input and fault catalogue of docs/reliability.md, run against the `dera` binary.
//! Every case asserts the exit code, the message, that nothing panicked, that the inputs are
//! unchanged (by checksum) and that nothing is left behind.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/models")
        .join(name)
}

fn assets(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn dera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dera"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dera")
}

/// Runs dera, expects `code` and `needle` in stderr, and never a panic.
fn fails(args: &[&str], code: i32, needle: &str) -> Output {
    let out = dera(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "dera {args:?}: {err}");
    assert!(
        err.contains(needle),
        "dera {args:?}: expected {needle:?} in: {err}"
    );
    assert!(!err.contains("panicked"), "dera {args:?} panicked: {err}");
    out
}

fn succeeds(args: &[&str]) -> Output {
    let out = dera(args);
    assert!(
        out.status.success(),
        "dera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `root` with a hash of its bytes (hidden ones included).
fn digest(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            let mut h = DefaultHasher::new();
            std::fs::read(&p).unwrap_or_default().hash(&mut h);
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), h.finish());
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A work folder holding copies of the golden llama pair and a prompts file.
struct Work {
    tmp: tempfile::TempDir,
    reference: PathBuf,
    aligned: PathBuf,
    prompts: PathBuf,
}

fn work() -> Work {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("models/ref");
    let aligned = tmp.path().join("models/aligned");
    copy_dir(&golden("llama"), &reference);
    copy_dir(&golden("llama_aligned_a"), &aligned);
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hello world\"}\n").unwrap();
    Work {
        tmp,
        reference,
        aligned,
        prompts,
    }
}

impl Work {
    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn r(&self) -> String {
        s(&self.reference)
    }
    fn a(&self) -> String {
        s(&self.aligned)
    }
}

/// No `.NAME.dera-*` temporary anywhere under `root`.
fn assert_no_temporaries(root: &Path) {
    for p in digest(root).keys() {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(
            !name.contains(".dera-tmp-") && !name.contains(".dera-old-"),
            "leftover {p:?}"
        );
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !name.contains(".dera-tmp-") && !name.contains(".dera-old-"),
                "leftover {p:?}"
            );
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
}

fn merge_args<'a>(w: &'a [String; 2], out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "merge",
        "--ref",
        &w[0],
        "--aligned",
        &w[1],
        "--lambda",
        "0.5",
        "--out",
        out,
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn merge_never_replaces_inputs_their_folder_or_foreign_folders() {
    let w = work();
    let io = [w.r(), w.a()];
    let before = digest(w.root());
    let models = s(&w.root().join("models"));
    // The data-loss case: --out is the folder that holds the inputs.
    for extra in [&[][..], &["--force"][..]] {
        fails(&merge_args(&io, &models, extra), 1, "contains the input");
        fails(&merge_args(&io, &w.r(), extra), 1, "is the input");
        let inside = s(&w.aligned.join("merged"));
        fails(
            &merge_args(&io, &inside, extra),
            1,
            "inside the input directory",
        );
        let root = s(w.root());
        fails(&merge_args(&io, &root, extra), 1, "contains the input");
    }
    // A folder of the user's, even with --force.
    let mine = w.root().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years of work").unwrap();
    let before_mine = digest(w.root());
    fails(
        &merge_args(&io, &s(&mine), &["--force"]),
        1,
        "dera did not write it",
    );
    assert_eq!(digest(w.root()), before_mine);
    std::fs::remove_dir_all(&mine).unwrap();
    assert_eq!(digest(w.root()), before, "inputs changed");
    // dera's own output is replaced with --force, and only then.
    let out = s(&w.root().join("merged"));
    succeeds(&merge_args(&io, &out, &[]));
    fails(
        &merge_args(&io, &out, &[]),
        1,
        "already exists (pass --force",
    );
    succeeds(&merge_args(&io, &out, &["--force"]));
    assert!(w.root().join("merged/.dera-output").is_file());
    assert_no_temporaries(w.root());
}

#[test]
fn file_outputs_refuse_inputs_and_existing_files_before_loading() {
    let w = work();
    let (r, a, p) = (w.r(), w.a(), s(&w.prompts));
    let existing = w.root().join("sweep.jsonl");
    std::fs::write(&existing, "precious\n").unwrap();
    let before = digest(w.root());
    let sweep = |out: &str, extra: &[&str]| {
        let mut v = vec![
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prompts",
            &p,
            "--lambdas",
            "0,1",
            "--samples",
            "1",
            "--max-new-tokens",
            "2",
            "--reward",
            "question",
            "--out",
        ];
        v.push(out);
        v.extend_from_slice(extra);
        v.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, code: i32, needle: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&refs, code, needle);
    };
    let e = s(&existing);
    run(sweep(&e, &[]), 1, "already exists (pass --force");
    run(sweep(&p, &["--force"]), 1, "is the input");
    let cfg = s(&w.reference.join("config.json"));
    run(sweep(&cfg, &["--force"]), 1, "inside the input directory");
    let new_in_model = s(&w.reference.join("sweep.jsonl"));
    run(sweep(&new_in_model, &[]), 1, "inside the input directory");
    let plot = s(&w.aligned.join("config.svg"));
    run(
        sweep(&s(&w.root().join("new.jsonl")), &["--plot", &plot]),
        1,
        "inside the input",
    );
    let same = s(&w.root().join("x.svg"));
    run(sweep(&same, &["--plot", &same]), 2, "the same file as");
    // eval pairwise --out and sweep merge --out.
    let prefs = w.root().join("prefs.jsonl");
    std::fs::write(
        &prefs,
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n",
    )
    .unwrap();
    let before = {
        let mut b = before;
        b.extend(
            digest(w.root())
                .into_iter()
                .filter(|(k, _)| k.ends_with("prefs.jsonl")),
        );
        b
    };
    let pf = s(&prefs);
    fails(
        &[
            "eval",
            "pairwise",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prefs",
            &pf,
            "--out",
            &pf,
            "--force",
        ],
        1,
        "is the input",
    );
    fails(
        &[
            "eval",
            "pairwise",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prefs",
            &pf,
            "--out",
            &e,
        ],
        1,
        "already exists",
    );
    fails(
        &["sweep", "merge", &e, "--out", &e, "--force"],
        1,
        "is the input",
    );
    assert_eq!(
        digest(w.root()),
        before,
        "an input or existing file changed"
    );
    assert_no_temporaries(w.root());
}

#[test]
fn sweep_writes_atomically_and_force_replaces_its_own_file() {
    let w = work();
    let (r, a) = (
        s(&assets("models/reference")),
        s(&assets("models/aligned-length")),
    );
    let p = s(&w.prompts);
    let out = w.root().join("out/sweep.jsonl");
    let o = s(&out);
    let args = |extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prompts",
            &p,
            "--lambdas",
            "0,1",
            "--samples",
            "1",
            "--max-new-tokens",
            "3",
            "--reward",
            "question",
            "--no-kl",
            "--out",
            &o,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |v: Vec<String>| dera(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let first = run(args(&[]));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}"); // 2 samples + 2 summaries
    let again = run(args(&[]));
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    assert!(run(args(&["--force", "--dtype", "f32"])).status.success());
    assert_eq!(
        std::fs::read_dir(out.parent().unwrap()).unwrap().count(),
        1,
        "temporary left beside the output"
    );
}

#[test]
fn out_of_range_options_are_usage_errors_before_anything_loads() {
    let w = work();
    let (r, a) = (w.r(), w.a());
    let gen_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["generate", "--ref", &r, "--prompt", "Hello"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    for (extra, needle) in [
        (&["--top-p", "0"][..], "top_p"),
        (&["--top-p", "1.5"][..], "top_p"),
        (&["--temperature=-1"][..], "temperature"),
        (&["--min-p", "2"][..], "min_p"),
        (&["--repetition-penalty", "0"][..], "penalty"),
        (
            &["--max-new-tokens", "500"][..],
            "leaves no room for a prompt",
        ),
    ] {
        let v = gen_args(extra);
        let out = fails(&v.iter().map(String::as_str).collect::<Vec<_>>(), 2, needle);
        assert!(out.stdout.is_empty(), "{extra:?} printed output");
    }
    // Lambdas that overflow the f32 mix, in every command that mixes.
    for l in ["1e39", "1e308", "-2e6"] {
        for cmd in ["logprobs", "generate", "score"] {
            fails(
                &[
                    cmd,
                    "--ref",
                    &r,
                    "--aligned",
                    &a,
                    "--lambda",
                    l,
                    "--prompt",
                    "x",
                    "--response",
                    "y",
                ][..if cmd == "score" { 11 } else { 9 }],
                2,
                "is outside [-1000000, 1000000]",
            );
        }
        let out = s(&w.root().join("m"));
        fails(
            &[
                "merge",
                "--ref",
                &r,
                "--aligned",
                &a,
                "--lambda",
                l,
                "--out",
                &out,
            ],
            2,
            "is outside [-1000000, 1000000]",
        );
    }
    // A lambda grid too large in total (each axis alone is fine).
    let p = s(&w.prompts);
    let o = s(&w.root().join("g.jsonl"));
    fails(
        &[
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--aligned",
            &a,
            "--lambdas",
            "0:100:1",
            "--prompts",
            &p,
            "--out",
            &o,
        ],
        2,
        "101 x 101 = 10201 lambda vectors",
    );
    fails(
        &[
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prompts",
            &p,
            "--out",
            &o,
            "--samples",
            "0",
        ],
        2,
        "at least one sample",
    );
    fails(
        &[
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prompts",
            &p,
            "--out",
            &o,
            "--temperature",
            "0",
        ],
        2,
        "temperature",
    );
    assert_no_temporaries(w.root());
    assert!(!w.root().join("g.jsonl").exists() && !w.root().join("m").exists());
}

#[test]
fn endless_or_huge_prompt_files_are_refused() {
    let w = work();
    let r = w.r();
    fails(
        &["generate", "--ref", &r, "--prompts", "/dev/zero"],
        1,
        "line longer than 1048576 bytes",
    );
    let many = w.root().join("blank.jsonl");
    let mut f = std::fs::File::create(&many).unwrap();
    f.write_all(&vec![b'\n'; 1_000_001]).unwrap();
    drop(f);
    fails(
        &["generate", "--ref", &r, "--prompts", &s(&many)],
        1,
        "more than 1000000 lines",
    );
    let o = s(&w.root().join("o.jsonl"));
    fails(
        &[
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &w.a(),
            "--prompts",
            "/dev/zero",
            "--out",
            &o,
        ],
        1,
        "line longer than",
    );
    fails(
        &[
            "eval",
            "pairwise",
            "--ref",
            &r,
            "--aligned",
            &w.a(),
            "--prefs",
            "/dev/zero",
        ],
        1,
        "line longer than",
    );
    fails(
        &[
            "compare",
            "--ref",
            &r,
            "--aligned",
            &w.a(),
            "--lambda",
            "0.5",
            "--prompts",
            "/dev/zero",
        ],
        1,
        "line longer than",
    );
}

#[test]
fn prompts_beyond_the_context_are_a_clear_error() {
    let w = work();
    let r = w.r();
    let long = "word ".repeat(200); // well past the fixture's 128 positions
    fails(
        &["logprobs", "--ref", &r, "--prompt", &long],
        2,
        "exceeds the context of 128 positions",
    );
    fails(
        &[
            "generate",
            "--ref",
            &r,
            "--prompt",
            "Hello there",
            "--max-new-tokens",
            "127",
        ],
        2,
        "exceeds the context of 128 positions",
    );
    fails(
        &["score", "--ref", &r, "--prompt", "Hi", "--response", &long],
        2,
        "exceeds the context",
    );
}

#[test]
fn nan_weights_bad_configs_and_escaping_shards_are_caught() {
    let w = work();
    // NaN in the final norm of the aligned copy.
    let st = w.aligned.join("model.safetensors");
    let file = dera_checkpoint::SafetensorsFile::open(&st).unwrap();
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = file
        .names()
        .into_iter()
        .map(|n| {
            let (v, shape) = file.read_f32(&n).unwrap();
            (n, v, shape)
        })
        .collect();
    drop(file);
    let norm = tensors
        .iter_mut()
        .find(|t| t.0 == "model.norm.weight")
        .unwrap();
    norm.1[0] = f32::NAN;
    write_f32(&st, &tensors);
    let (r, a) = (w.r(), w.a());
    let out = fails(
        &[
            "logprobs",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--lambda",
            "0.5",
            "--prompt",
            "Hi",
            "--format",
            "json",
        ],
        1,
        "non-finite logits",
    );
    assert!(out.stdout.is_empty(), "NaN log-probs were printed");
    fails(
        &[
            "generate",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--lambda",
            "2",
            "--prompt",
            "Hi",
            "--greedy",
        ],
        1,
        "decoding step 0",
    );
    let out = fails(&["check", &a], 1, "1 problem(s) found");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL finite")
            && report.contains("tensor `model.norm.weight`: 1 of 64 values"),
        "{report}"
    );
    let ok = succeeds(&["check", &r]);
    let report = String::from_utf8_lossy(&ok.stdout);
    assert!(
        report.contains("ok   finite") && !report.contains("FAIL"),
        "{report}"
    );
    let json: Value =
        serde_json::from_slice(&succeeds(&["check", &r, "--format", "json"]).stdout).unwrap();
    assert_eq!(json["problems"], 0);
    // rope_theta <= 0 is a config error naming the field.
    let cfg_path = w.reference.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["rope_parameters"]["rope_theta"] = json!(0.0);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    fails(
        &["logprobs", "--ref", &r, "--prompt", "Hi"],
        1,
        "`rope_theta`",
    );
    let out = fails(&["check", &r], 1, "problem(s) found");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL config"));
    // A sharded index naming a file outside the checkpoint.
    let sharded = w.root().join("sharded");
    copy_dir(&golden("llama"), &sharded);
    std::fs::rename(
        sharded.join("model.safetensors"),
        w.root().join("outside.safetensors"),
    )
    .unwrap();
    let names = dera_checkpoint::SafetensorsFile::open(&w.root().join("outside.safetensors"))
        .unwrap()
        .names();
    let map: serde_json::Map<String, Value> = names
        .into_iter()
        .map(|n| (n, json!("../outside.safetensors")))
        .collect();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    fails(
        &["logprobs", "--ref", &s(&sharded), "--prompt", "Hi"],
        1,
        "shard name \"../outside.safetensors\"",
    );
}

fn write_f32(path: &Path, tensors: &[(String, Vec<f32>, Vec<usize>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, _, shape), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn a_closed_stdout_ends_quietly_with_status_zero() {
    let r = s(&golden("llama"));
    for args in [
        vec!["logprobs", "--ref", &r, "--prompt", "Hello", "--top", "50"],
        vec![
            "logprobs", "--ref", &r, "--prompt", "Hello", "--format", "json",
        ],
        vec![
            "generate",
            "--ref",
            &r,
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "8",
        ],
        vec!["check", &r],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dera"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn compare_applies_truncate_vocab() {
    let w = work();
    // The aligned copy gets 8 padded rows in its embedding and head, as padded checkpoints do.
    let st = w.aligned.join("model.safetensors");
    let file = dera_checkpoint::SafetensorsFile::open(&st).unwrap();
    let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = file
        .names()
        .into_iter()
        .map(|n| {
            let (mut v, mut shape) = file.read_f32(&n).unwrap();
            if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
                v.extend(std::iter::repeat_n(0.0, 8 * shape[1]));
                shape[0] += 8;
            }
            (n, v, shape)
        })
        .collect();
    drop(file);
    write_f32(&st, &tensors);
    let cfg_path = w.aligned.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["vocab_size"] = json!(408);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (r, a, p) = (w.r(), w.a(), s(&w.prompts));
    let base = [
        "compare",
        "--ref",
        &r,
        "--aligned",
        &a,
        "--lambda",
        "0.5",
        "--prompts",
        &p,
        "--max-new-tokens",
        "4",
        "--format",
        "json",
    ];
    fails(&base, 1, "vocabulary");
    let with = [&base[..], &["--truncate-vocab"]].concat();
    let out = succeeds(&with);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r0 = &v["results"][0];
    assert_eq!(r0["tokens"], 4, "{v}");
    assert!(r0["mean_kl"].as_f64().unwrap().is_finite());
}

/// A reference and an aligned checkpoint of `mb` MiB each (f32, a few tensors), so a merge
/// takes long enough to be interrupted.
fn big_pair(dir: &Path, mb: usize) -> (PathBuf, PathBuf) {
    let per = mb * (1 << 20) / 4 / 4; // four tensors
    let make = |name: &str, seed: f32| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = (0..4)
            .map(|i| {
                let v: Vec<f32> = (0..per)
                    .map(|j| seed + ((i * 7 + j) % 251) as f32 * 1e-3)
                    .collect();
                (
                    format!("model.layers.{i}.mlp.up_proj.weight"),
                    v,
                    vec![per / 256, 256],
                )
            })
            .collect();
        write_f32(&d.join("model.safetensors"), &tensors);
        std::fs::write(
            d.join("config.json"),
            json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).to_string(),
        )
        .unwrap();
        d
    };
    (make("ref", 0.0), make("aligned", 1.0))
}

/// Starts a merge and sends `signal` once its temporary output holds at least `bytes` bytes.
/// Returns the exit status and whether the signal landed while the merge was running.
fn interrupt_merge(
    args: &[String],
    root: &Path,
    signal: &str,
    bytes: u64,
) -> (std::process::ExitStatus, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dera"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut landed = false;
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, landed);
        }
        let written: u64 = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".dera-tmp-"))
            .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
            .filter_map(|f| f.metadata().ok().map(|m| m.len()))
            .sum();
        if written >= bytes {
            if signal == "KILL" {
                child.kill().unwrap();
            } else {
                let ok = Command::new("kill")
                    .args([&format!("-{signal}"), &child.id().to_string()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
            landed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (child.wait().unwrap(), landed)
}

#[test]
fn killed_and_interrupted_merges_leave_nothing_and_keep_the_old_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, a) = big_pair(tmp.path(), 24);
    let inputs = digest(tmp.path());
    let out = tmp.path().join("merged");
    let args = |force: bool| {
        let mut v: Vec<String> = [
            "merge",
            "--ref",
            &s(&r),
            "--aligned",
            &s(&a),
            "--lambda",
            "0.5",
            "--out",
            &s(&out),
            "--f64",
            "--max-shard-size",
            "4MB",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if force {
            v.push("--force".into());
        }
        v
    };
    let mut landed_any = false;
    // Interrupt a fresh merge (no output yet), then a forced one that replaces an old output.
    for (signal, at) in [
        ("INT", 1u64),
        ("TERM", 8 << 20),
        ("KILL", 1),
        ("KILL", 12 << 20),
    ] {
        for replace in [false, true] {
            if replace && !out.exists() {
                let v = args(false);
                succeeds(&v.iter().map(String::as_str).collect::<Vec<_>>());
            }
            if !replace && out.exists() {
                std::fs::remove_dir_all(&out).unwrap();
            }
            let old = out.exists().then(|| digest(&out));
            let (status, landed) = interrupt_merge(&args(replace), tmp.path(), signal, at);
            landed_any |= landed;
            if landed && signal != "KILL" {
                assert_eq!(status.code(), Some(130), "{signal} at {at}");
            }
            // Interrupted: the old output (or none) is still there, complete.
            if landed {
                match &old {
                    Some(d) => assert_eq!(&digest(&out), d, "{signal}: old output changed"),
                    None => assert!(!out.exists(), "{signal}: partial output"),
                }
            }
            if signal != "KILL" {
                assert_no_temporaries(tmp.path());
            } else if landed {
                // SIGKILL cannot be caught: the temporary stays until the next merge.
                let left = std::fs::read_dir(tmp.path()).unwrap().flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".merged.dera-tmp-")
                });
                assert!(left, "a killed merge left no temporary to clean");
            }
            // The next merge succeeds and cleans what a killed run left.
            if out.exists() {
                std::fs::remove_dir_all(&out).unwrap();
            }
            let v = args(false);
            succeeds(&v.iter().map(String::as_str).collect::<Vec<_>>());
            assert_no_temporaries(tmp.path());
            assert!(out.join(".dera-output").is_file());
            assert!(out.join("model.safetensors.index.json").is_file());
        }
    }
    assert!(
        landed_any,
        "no signal reached a running merge: make the pair bigger"
    );
    // The inputs never changed.
    let now: BTreeMap<_, _> = digest(tmp.path())
        .into_iter()
        .filter(|(k, _)| !k.starts_with("merged"))
        .collect();
    assert_eq!(now, inputs);
}

#[test]
fn sweep_max_new_tokens_must_leave_room_for_a_prompt() {
    let w = work();
    let (r, a, p) = (w.r(), w.a(), s(&w.prompts));
    let o = s(&w.root().join("o.jsonl"));
    fails(
        &[
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prompts",
            &p,
            "--out",
            &o,
            "--max-new-tokens",
            "128",
        ],
        2,
        "leaves no room for a prompt",
    );
    assert!(!w.root().join("o.jsonl").exists());
}

#[test]
fn devices_are_never_outputs_and_prompt_batches_are_bounded() {
    let w = work();
    let (r, a, p) = (w.r(), w.a(), s(&w.prompts));
    fails(
        &[
            "sweep",
            "--ref",
            &r,
            "--aligned",
            &a,
            "--prompts",
            &p,
            "--out",
            "/dev/null",
            "--force",
        ],
        1,
        "is not a regular file",
    );
    assert!(Path::new("/dev/null").exists());
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
            "",
        ],
        2,
        "a value is required",
    );
    let many = w.root().join("many.jsonl");
    std::fs::write(&many, "{\"prompt\": \"x\"}\n".repeat(4097)).unwrap();
    fails(
        &["generate", "--ref", &r, "--prompts", &s(&many)],
        1,
        "4097 prompts",
    );
    assert_no_temporaries(w.root());
}
