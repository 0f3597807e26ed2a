//! Streamed output reopened with dera-checkpoint equals the in-memory merge; sharding,
//! metadata, copied files, tied heads and vocabulary truncation.

mod common;

use std::cell::RefCell;

use common::*;
use dera_checkpoint::{Checkpoint, SafetensorsFile, TensorMap};
use dera_merge::{
    Accumulate, MergeInputs, MergeOptions, OutDtype, VocabPolicy, merge_checkpoints,
    merge_in_memory, plan,
};
use safetensors::Dtype;
use sha2::{Digest, Sha256};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every tensor of the checkpoint at `dir` equals `map`, bit for bit, and nothing is extra.
fn assert_equals_map(dir: &std::path::Path, map: &TensorMap) {
    let ckpt = Checkpoint::open(dir).unwrap();
    assert_eq!(ckpt.names().count(), map.len());
    for name in map.names() {
        let (values, shape) = ckpt.read_f32(name).unwrap();
        let (want, want_shape) = map.get(name).unwrap();
        assert_eq!(shape, want_shape, "{name}");
        assert_eq!(bits(&values), bits(want), "{name}");
    }
}

#[test]
fn streamed_equals_in_memory() {
    for (dtype, out_dtype, accumulate) in [
        (Dtype::BF16, None, Accumulate::F32),
        (Dtype::BF16, None, Accumulate::F64),
        (Dtype::BF16, Some(OutDtype::F32), Accumulate::F32),
        (Dtype::F32, Some(OutDtype::BF16), Accumulate::F64),
        (Dtype::F32, Some(OutDtype::F16), Accumulate::F32),
        (Dtype::F16, None, Accumulate::F32),
    ] {
        let p = pair(dtype);
        let options = MergeOptions {
            dtype: out_dtype,
            accumulate,
            ..MergeOptions::default()
        };
        let inputs = p.inputs(0.3);
        let report = merge_checkpoints(&inputs, &p.out, &options, None).unwrap();
        assert!(!report.plan.is_sharded());
        let map = merge_in_memory(&inputs, &options).unwrap();
        assert_equals_map(&p.out, &map);
        let want = out_dtype.map_or(dtype, OutDtype::dtype);
        let ckpt = Checkpoint::open(&p.out).unwrap();
        assert!(ckpt.names().all(|n| ckpt.raw(n).unwrap().dtype == want));
    }
}

#[test]
fn sharded_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    // A sharded reference and two single-file aligned models.
    write_sharded(&a, &llama_tensors(1, Dtype::BF16, 32), &llama_config(32), 2);
    write_checkpoint(&b, &llama_tensors(2, Dtype::BF16, 32), &llama_config(32));
    write_checkpoint(&c, &llama_tensors(3, Dtype::BF16, 32), &llama_config(32));
    let inputs = MergeInputs {
        reference: a.clone(),
        aligned: vec![b, c],
        lambdas: vec![0.25, -0.5],
    };
    let options = MergeOptions {
        max_shard_size: dera_merge::parse_size("300B").unwrap(),
        ..MergeOptions::default()
    };
    let out = tmp.path().join("out");
    let dry = plan(&inputs, &out, &options).unwrap();
    assert!(!out.exists());
    let report = merge_checkpoints(&inputs, &out, &options, None).unwrap();
    assert_eq!(report.plan, dry);
    let n = report.plan.shards.len();
    assert!(n >= 3, "{n} shards");
    assert!(!out.join("model.safetensors").exists());
    for i in 0..n {
        let f = out.join(format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        assert!(f.is_file(), "{}", f.display());
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], report.plan.bytes_written);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 5);
    let ckpt = Checkpoint::open(&out).unwrap();
    assert!(ckpt.is_sharded());
    assert_eq!(ckpt.files().len(), n);
    assert_equals_map(&out, &merge_in_memory(&inputs, &options).unwrap());
    // The sharded reference is hashed file by file.
    let meta = ckpt.files()[0].user_metadata().unwrap();
    assert_eq!(meta["dera.input.0.sha256"].split(',').count(), 2);
    assert_eq!(meta["dera.coefficients"], "[1.25,0.25,-0.5]");
    assert_no_leftovers(&out);
}

#[test]
fn metadata_hashes_and_copied_files() {
    let p = pair(Dtype::BF16);
    for f in ["tokenizer.json", "generation_config.json", "merges.txt"] {
        std::fs::write(p.reference.join(f), format!("contents of {f}")).unwrap();
    }
    let report = merge_checkpoints(&p.inputs(0.3), &p.out, &MergeOptions::default(), None).unwrap();
    let file = SafetensorsFile::open(&p.out.join("model.safetensors")).unwrap();
    let meta = file.user_metadata().unwrap();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["dera.coefficients"], "[0.7,0.3]");
    assert_eq!(meta["dera.lambdas"], "[0.3]");
    assert_eq!(meta["dera.accumulate"], "f32");
    for (i, dir) in [&p.reference, &p.aligned].iter().enumerate() {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(meta[&format!("dera.input.{i}.sha256")], hex);
        assert_eq!(
            meta[&format!("dera.input.{i}.path")],
            dir.display().to_string()
        );
        assert_eq!(
            meta[&format!("dera.input.{i}.files")],
            "[\"model.safetensors\"]"
        );
        assert_eq!(
            report.input_sha256[i],
            vec![("model.safetensors".into(), hex)]
        );
    }
    for f in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "merges.txt",
    ] {
        assert_eq!(
            std::fs::read(p.out.join(f)).unwrap(),
            std::fs::read(p.reference.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!p.out.join("vocab.json").exists());

    // A dtype override rewrites torch_dtype in the copied config.
    let out2 = p.tmp.path().join("out2");
    let options = MergeOptions {
        dtype: Some(OutDtype::F32),
        ..MergeOptions::default()
    };
    merge_checkpoints(&p.inputs(0.3), &out2, &options, None).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    assert_eq!(config["model_type"], "llama");
}

#[test]
fn progress_and_plan_display() {
    let p = pair(Dtype::BF16);
    let seen = RefCell::new(Vec::new());
    let report = merge_checkpoints(
        &p.inputs(0.3),
        &p.out,
        &MergeOptions::default(),
        Some(&|pr| seen.borrow_mut().push(pr.clone())),
    )
    .unwrap();
    let seen = seen.into_inner();
    assert_eq!(seen.len(), 5);
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (5, 5));
    assert_eq!(last.bytes_done, report.plan.bytes_written);
    let data = std::fs::metadata(p.out.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(data > report.plan.bytes_written);
    let text = report.plan.to_string();
    assert!(
        text.contains("5 tensors (5 interpolated in F32, 0 copied)"),
        "{text}"
    );
    assert!(text.contains("+0.700000"), "{text}");
    assert!(text.contains("BF16 -> BF16"), "{text}");
    assert_eq!(report.plan.bytes_read, 2 * report.plan.bytes_written);

    // A zero coefficient means the input is not read.
    let dry = plan(
        &p.inputs(0.0),
        &p.tmp.path().join("x"),
        &MergeOptions::default(),
    )
    .unwrap();
    assert_eq!(dry.bytes_read, dry.bytes_written);
}

#[test]
fn tied_head_present_in_only_one_model_is_ignored() {
    let p = pair(Dtype::BF16);
    let mut t = llama_tensors(2, Dtype::BF16, 32);
    t.push(tensor(
        "lm_head.weight",
        Dtype::BF16,
        &[32, 8],
        &values(7, 256),
    ));
    write_checkpoint(&p.aligned, &t, &llama_config(32));
    let report = merge_checkpoints(&p.inputs(0.5), &p.out, &MergeOptions::default(), None).unwrap();
    assert_eq!(report.plan.ignored, vec!["lm_head.weight".to_string()]);
    assert!(!Checkpoint::open(&p.out).unwrap().contains("lm_head.weight"));

    // Untied models must agree on the head.
    let mut config = llama_config(32);
    config["tie_word_embeddings"] = false.into();
    write_checkpoint(&p.aligned, &t, &config);
    write_checkpoint(&p.reference, &llama_tensors(1, Dtype::BF16, 32), &config);
    let e = merge_checkpoints(
        &p.inputs(0.5),
        &p.tmp.path().join("o2"),
        &MergeOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("tensor `lm_head.weight` is in"),
        "{e}"
    );
}

#[test]
fn gpt2_always_ties() {
    let tmp = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]});
    let wte = tensor(
        "transformer.wte.weight",
        Dtype::F32,
        &[10, 4],
        &values(1, 40),
    );
    let head = tensor("lm_head.weight", Dtype::F32, &[10, 4], &values(1, 40));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_checkpoint(&a, std::slice::from_ref(&wte), &config);
    write_checkpoint(&b, &[wte, head], &config);
    let inputs = MergeInputs {
        reference: a,
        aligned: vec![b],
        lambdas: vec![0.5],
    };
    let out = tmp.path().join("out");
    let report = merge_checkpoints(&inputs, &out, &MergeOptions::default(), None).unwrap();
    assert_eq!(report.plan.ignored, vec!["lm_head.weight".to_string()]);
}

#[test]
fn vocabulary_truncation_opt_in() {
    let p = pair(Dtype::BF16);
    let mut t = llama_tensors(2, Dtype::BF16, 30);
    t.push(tensor(
        "lm_head.weight",
        Dtype::BF16,
        &[30, 8],
        &values(7, 240),
    ));
    write_checkpoint(&p.aligned, &t, &llama_config(30));
    let mut t = llama_tensors(1, Dtype::BF16, 32);
    t.push(tensor(
        "lm_head.weight",
        Dtype::BF16,
        &[32, 8],
        &values(8, 256),
    ));
    write_checkpoint(&p.reference, &t, &llama_config(32));
    let options = MergeOptions {
        vocab: VocabPolicy::TruncateToSmallest,
        ..MergeOptions::default()
    };
    let report = merge_checkpoints(&p.inputs(0.5), &p.out, &options, None).unwrap();
    assert_eq!(report.plan.vocab_size, Some(30));
    let out = Checkpoint::open(&p.out).unwrap();
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        assert_eq!(out.raw(name).unwrap().shape, [30, 8]);
        // Row r of the output mixes row r of both inputs.
        let (o, _) = out.read_f32(name).unwrap();
        let (r, _) = Checkpoint::open(&p.reference)
            .unwrap()
            .read_f32(name)
            .unwrap();
        let (a, _) = Checkpoint::open(&p.aligned)
            .unwrap()
            .read_f32(name)
            .unwrap();
        for i in 0..240 {
            let want = half::bf16::from_f32(0.5f32 * r[i] + 0.5f32 * a[i]).to_f32();
            assert_eq!(o[i].to_bits(), want.to_bits(), "{name}[{i}]");
        }
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 30);
    assert_equals_map(&p.out, &merge_in_memory(&p.inputs(0.5), &options).unwrap());
}

#[test]
fn identical_non_float_tensors_are_copied() {
    let p = pair(Dtype::BF16);
    let ids: Vec<u8> = [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    for (dir, seed) in [(&p.reference, 1), (&p.aligned, 2)] {
        let mut t = llama_tensors(seed, Dtype::BF16, 32);
        t.push((
            "model.position_ids".into(),
            Dtype::I64,
            vec![3],
            ids.clone(),
        ));
        write_checkpoint(dir, &t, &llama_config(32));
    }
    let report = merge_checkpoints(&p.inputs(0.5), &p.out, &MergeOptions::default(), None).unwrap();
    assert_eq!(report.plan.tensors.iter().filter(|t| !t.merged).count(), 1);
    let out = Checkpoint::open(&p.out).unwrap();
    let raw = out.raw("model.position_ids").unwrap();
    assert_eq!((raw.dtype, raw.bytes), (Dtype::I64, ids.as_slice()));
}

#[test]
fn tensors_larger_than_one_chunk() {
    // 2^21 elements is one streaming chunk; this tensor spans two, with a ragged tail.
    let n = (1 << 21) + 1000;
    let tmp = tempfile::tempdir().unwrap();
    let config = llama_config(32);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_checkpoint(
        &a,
        &[tensor("big", Dtype::BF16, &[n], &values(1, n))],
        &config,
    );
    write_checkpoint(
        &b,
        &[tensor("big", Dtype::BF16, &[n], &values(2, n))],
        &config,
    );
    let inputs = MergeInputs {
        reference: a,
        aligned: vec![b],
        lambdas: vec![0.375],
    };
    let out = tmp.path().join("out");
    let options = MergeOptions {
        dtype: Some(OutDtype::F16),
        ..MergeOptions::default()
    };
    merge_checkpoints(&inputs, &out, &options, None).unwrap();
    assert_equals_map(&out, &merge_in_memory(&inputs, &options).unwrap());
}

#[test]
fn hashing_can_be_turned_off() {
    let p = pair(Dtype::BF16);
    let options = MergeOptions {
        hash_inputs: false,
        ..MergeOptions::default()
    };
    let report = merge_checkpoints(&p.inputs(0.3), &p.out, &options, None).unwrap();
    assert!(report.input_sha256.is_empty());
    assert_eq!(report.plan.bytes_hashed, 0);
    let file = SafetensorsFile::open(&p.out.join("model.safetensors")).unwrap();
    let meta = file.user_metadata().unwrap();
    assert!(!meta.contains_key("dera.input.0.sha256"));
    assert_eq!(meta["dera.input.1.path"], p.aligned.display().to_string());
    assert_equals_map(&p.out, &merge_in_memory(&p.inputs(0.3), &options).unwrap());
}
