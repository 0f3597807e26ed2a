//! Every bad input is refused with a message naming the culprit, before anything is written.

mod common;

use std::path::Path;

use common::*;
use dera_merge::{
    MergeInputs, MergeOptions, VocabPolicy, merge_checkpoints, merge_in_memory, plan,
};
use safetensors::Dtype;

/// Runs the merge, checks the message, and checks that no output or temp dir is left.
fn refused(inputs: &MergeInputs, out: &Path, options: &MergeOptions, message: &str) {
    let e = plan(inputs, out, options).unwrap_err();
    assert_eq!(e.to_string(), message, "plan");
    let e = merge_checkpoints(inputs, out, options, None).unwrap_err();
    assert_eq!(e.to_string(), message, "merge");
    assert_no_output(out);
}

fn strict() -> MergeOptions {
    MergeOptions::default()
}

/// Rewrites the aligned model with `edit` applied to its tensors.
fn edit_aligned(p: &Pair, edit: impl FnOnce(&mut Vec<Tensor>)) {
    let mut t = llama_tensors(2, Dtype::BF16, 32);
    edit(&mut t);
    write_checkpoint(&p.aligned, &t, &llama_config(32));
}

#[test]
fn missing_and_extra_tensor_names() {
    let p = pair(Dtype::BF16);
    edit_aligned(&p, |t| t.retain(|t| t.0 != "model.norm.weight"));
    let msg = format!(
        "tensor `model.norm.weight` is in {} but missing from {}",
        p.reference.display(),
        p.aligned.display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);

    edit_aligned(&p, |t| {
        t.push(tensor("model.extra", Dtype::BF16, &[2], &[1.0, 2.0]))
    });
    let msg = format!(
        "tensor `model.extra` is in {} but missing from {}",
        p.aligned.display(),
        p.reference.display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);
}

#[test]
fn shape_mismatch() {
    let p = pair(Dtype::BF16);
    edit_aligned(&p, |t| {
        t[1] = tensor(&t[1].0.clone(), Dtype::BF16, &[4, 16], &values(9, 64));
    });
    let msg = format!(
        "tensor `model.layers.0.self_attn.q_proj.weight` has shape [8, 8] in {} but [4, 16] in {}",
        p.reference.display(),
        p.aligned.display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);
}

#[test]
fn dtype_mismatch() {
    let p = pair(Dtype::BF16);
    edit_aligned(&p, |t| {
        t[3] = tensor(&t[3].0.clone(), Dtype::F32, &[8], &values(9, 8))
    });
    let msg = format!(
        "tensor `model.layers.0.input_layernorm.weight` has dtype BF16 in {} but F32 in {}",
        p.reference.display(),
        p.aligned.display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);
}

#[test]
fn architecture_mismatch() {
    let p = pair(Dtype::BF16);
    let mut config = llama_config(32);
    config["model_type"] = "mistral".into();
    write_checkpoint(&p.aligned, &llama_tensors(2, Dtype::BF16, 32), &config);
    let msg = format!(
        "config field `model_type` differs: \"llama\" in {} but \"mistral\" in {}",
        p.reference.join("config.json").display(),
        p.aligned.join("config.json").display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);

    let mut config = llama_config(32);
    config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    write_checkpoint(&p.aligned, &llama_tensors(2, Dtype::BF16, 32), &config);
    let msg = format!(
        "config field `architectures` differs: [\"LlamaForCausalLM\"] in {} but [\"MistralForCausalLM\"] in {}",
        p.reference.join("config.json").display(),
        p.aligned.join("config.json").display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);
}

#[test]
fn vocabulary_mismatch_without_opt_in() {
    let p = pair(Dtype::BF16);
    write_checkpoint(
        &p.aligned,
        &llama_tensors(2, Dtype::BF16, 30),
        &llama_config(30),
    );
    let msg = format!(
        "vocabulary mismatch: tensor `model.embed_tokens.weight` has 32 rows in {} but 30 in {} \
         (opt in to VocabPolicy::TruncateToSmallest to merge the first 30 rows)",
        p.reference.display(),
        p.aligned.display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);
    assert_eq!(
        merge_in_memory(&p.inputs(0.5), &strict())
            .unwrap_err()
            .to_string(),
        msg
    );
    // Opting in succeeds (checked in detail in roundtrip.rs).
    let opt_in = MergeOptions {
        vocab: VocabPolicy::TruncateToSmallest,
        ..strict()
    };
    merge_checkpoints(&p.inputs(0.5), &p.out, &opt_in, None).unwrap();
}

#[test]
fn truncated_input_file() {
    let p = pair(Dtype::BF16);
    let file = p.aligned.join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let e = merge_checkpoints(&p.inputs(0.5), &p.out, &strict(), None).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("invalid safetensors file {}: ", file.display())),
        "{text}"
    );
    assert_no_output(&p.out);
}

#[test]
fn file_truncated_during_the_merge_leaves_nothing() {
    let p = pair(Dtype::BF16);
    let file = p.aligned.join("model.safetensors");
    let cut = || {
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(200).unwrap();
    };
    let e = merge_checkpoints(&p.inputs(0.5), &p.out, &strict(), Some(&|_| cut())).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("I/O error on {}", file.display())),
        "{e}"
    );
    assert_no_output(&p.out);
}

#[test]
fn non_finite_and_miscounted_lambdas() {
    let p = pair(Dtype::BF16);
    refused(
        &p.inputs(f64::NAN),
        &p.out,
        &strict(),
        "lambda[0] = NaN is not finite",
    );
    refused(
        &p.inputs(f64::NEG_INFINITY),
        &p.out,
        &strict(),
        "lambda[0] = -inf is not finite",
    );
    let mut inputs = p.inputs(0.5);
    inputs.lambdas.push(0.1);
    refused(
        &inputs,
        &p.out,
        &strict(),
        "2 lambda(s) given for 1 aligned checkpoint(s)",
    );
}

#[test]
fn missing_directory() {
    let p = pair(Dtype::BF16);
    let mut inputs = p.inputs(0.5);
    inputs.aligned[0] = p.tmp.path().join("nope");
    let msg = format!(
        "missing file {}: checkpoint directory does not exist",
        inputs.aligned[0].display()
    );
    refused(&inputs, &p.out, &strict(), &msg);
}

#[test]
fn existing_output_needs_force_and_must_be_deras_own() {
    let p = pair(Dtype::BF16);
    std::fs::create_dir(&p.out).unwrap();
    std::fs::write(p.out.join("keep.txt"), "mine").unwrap();
    let msg = format!(
        "output {} already exists (pass --force to replace it)",
        p.out.display()
    );
    let e = merge_checkpoints(&p.inputs(0.5), &p.out, &strict(), None).unwrap_err();
    assert_eq!(e.to_string(), msg);
    let force = MergeOptions {
        force: true,
        ..strict()
    };
    // A folder dera did not write is never replaced, even with force.
    let e = merge_checkpoints(&p.inputs(0.5), &p.out, &force, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("no .dera-output marker, so dera did not write it"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(p.out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_no_leftovers(&p.out);

    // An empty folder may be replaced; the result carries dera's marker.
    std::fs::remove_file(p.out.join("keep.txt")).unwrap();
    merge_checkpoints(&p.inputs(0.25), &p.out, &force, None).unwrap();
    assert!(p.out.join(".dera-output").is_file());
    let first = std::fs::read(p.out.join("model.safetensors")).unwrap();

    // A failing forced merge keeps the old directory.
    let e = merge_checkpoints(&p.inputs(f64::NAN), &p.out, &force, None).unwrap_err();
    assert_eq!(e.to_string(), "lambda[0] = NaN is not finite");
    assert_eq!(
        std::fs::read(p.out.join("model.safetensors")).unwrap(),
        first
    );
    assert_no_leftovers(&p.out);

    // A successful one replaces dera's own output.
    merge_checkpoints(&p.inputs(0.5), &p.out, &force, None).unwrap();
    assert_ne!(
        std::fs::read(p.out.join("model.safetensors")).unwrap(),
        first
    );
    assert_no_leftovers(&p.out);

    // Once the user adds a file, it is theirs: force refuses.
    std::fs::write(p.out.join("notes.md"), "mine").unwrap();
    let e = merge_checkpoints(&p.inputs(0.5), &p.out, &force, None).unwrap_err();
    assert!(e.to_string().contains("holds `notes.md`"), "{e}");
    assert!(p.out.join("notes.md").is_file());
    assert_no_leftovers(&p.out);
}

#[test]
fn output_may_not_be_an_input_nor_hold_one_nor_lie_inside_one() {
    let p = pair(Dtype::BF16);
    let force = MergeOptions {
        force: true,
        ..strict()
    };
    let before = std::fs::read(p.aligned.join("model.safetensors")).unwrap();
    let msg = format!(
        "output {} is the input {}: dera never overwrites its inputs",
        p.aligned.display(),
        p.aligned.display()
    );
    let e = merge_checkpoints(&p.inputs(0.5), &p.aligned, &force, None).unwrap_err();
    assert_eq!(e.to_string(), msg);
    // The folder that holds both inputs (the data-loss case).
    let parent = p.tmp.path().to_path_buf();
    for options in [strict(), force.clone()] {
        let e = merge_checkpoints(&p.inputs(0.5), &parent, &options, None).unwrap_err();
        assert!(e.to_string().contains("contains the input"), "{e}");
        let e = plan(&p.inputs(0.5), &parent, &options).unwrap_err();
        assert!(e.to_string().contains("contains the input"), "{e}");
    }
    let inside = p.reference.join("merged");
    let e = merge_checkpoints(&p.inputs(0.5), &inside, &force, None).unwrap_err();
    assert!(
        e.to_string().contains("is inside the input directory"),
        "{e}"
    );
    assert!(!inside.exists());
    assert_eq!(
        std::fs::read(p.aligned.join("model.safetensors")).unwrap(),
        before
    );
    assert_no_leftovers(&p.aligned);
    assert!(p.reference.join("config.json").is_file());
}

#[test]
fn huge_lambdas_are_refused_with_the_limit() {
    let p = pair(Dtype::BF16);
    for l in [1e39, 1e308, -2e6] {
        let e = merge_checkpoints(&p.inputs(l), &p.out, &strict(), None).unwrap_err();
        assert!(
            e.to_string().contains("lambda[0]") && e.to_string().contains("1000000"),
            "{e}"
        );
        assert_no_output(&p.out);
    }
}

#[test]
fn an_overflowing_sum_is_an_error_not_a_nan_checkpoint() {
    let p = pair(Dtype::F32);
    let mut t = llama_tensors(2, Dtype::F32, 32);
    // One huge but finite weight: 2 * 3e38 overflows f32 at lambda = 2.
    let norm = t.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
    norm.3[..4].copy_from_slice(&3e38f32.to_le_bytes());
    write_checkpoint(&p.aligned, &t, &llama_config(32));
    let e = merge_checkpoints(&p.inputs(2.0), &p.out, &strict(), None).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("tensor `model.norm.weight`: element 0 would be inf")
            && msg.contains("every input value there is finite"),
        "{msg}"
    );
    assert_no_output(&p.out);
    let e = merge_in_memory(&p.inputs(2.0), &strict()).unwrap_err();
    assert!(e.to_string().contains("model.norm.weight"), "{e}");
    // lambda = 1 copies the aligned model's (finite) weight: allowed.
    merge_checkpoints(&p.inputs(1.0), &p.out, &strict(), None).unwrap();
}

#[test]
fn non_float_tensors_must_agree() {
    let p = pair(Dtype::BF16);
    let ids = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut t = llama_tensors(1, Dtype::BF16, 32);
    t.push((
        "model.position_ids".into(),
        Dtype::I64,
        vec![3],
        ids(&[0, 1, 2]),
    ));
    write_checkpoint(&p.reference, &t, &llama_config(32));
    edit_aligned(&p, |t| {
        t.push((
            "model.position_ids".into(),
            Dtype::I64,
            vec![3],
            ids(&[0, 1, 3]),
        ))
    });
    let msg = format!(
        "tensor `model.position_ids` has non-float dtype I64 and differs between {} and {}",
        p.reference.display(),
        p.aligned.display()
    );
    refused(&p.inputs(0.5), &p.out, &strict(), &msg);
}
