//! lambda = 0 gives the reference and lambda = e_i gives model i, bit for bit.

mod common;

use common::*;
use dera_checkpoint::{Checkpoint, bytes_to_f32};
use dera_merge::{Accumulate, MergeInputs, MergeOptions, merge_checkpoints, merge_in_memory};
use safetensors::Dtype;

/// Values that arithmetic could disturb: signed zeros, infinities, a quiet NaN, subnormals.
const SPECIAL: [f32; 10] = [
    0.0,
    -0.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    1e-40,
    -1.0e-45,
    6.0e-8,
    65504.0,
    -3.0e38,
];

fn models(dtype: Dtype, dir: &std::path::Path, count: u64) -> Vec<std::path::PathBuf> {
    (0..count)
        .map(|i| {
            let mut tensors = llama_tensors(i + 1, dtype, 32);
            tensors.push(tensor("model.special", dtype, &[10], &SPECIAL));
            let d = dir.join(format!("m{i}"));
            write_checkpoint(&d, &tensors, &llama_config(32));
            d
        })
        .collect()
}

fn assert_same_tensors(out: &Checkpoint, want: &Checkpoint, what: &str) {
    assert_eq!(out.names().count(), want.names().count());
    for name in want.names() {
        let (a, b) = (out.raw(name).unwrap(), want.raw(name).unwrap());
        assert_eq!(a.dtype, b.dtype, "{what}: {name}");
        assert_eq!(a.shape, b.shape, "{what}: {name}");
        assert!(a.bytes == b.bytes, "{what}: tensor {name} differs");
    }
}

#[test]
fn unit_coefficients_reproduce_inputs_bit_for_bit() {
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F64] {
        for accumulate in [Accumulate::F32, Accumulate::F64] {
            let tmp = tempfile::tempdir().unwrap();
            let dirs = models(dtype, tmp.path(), 3);
            let options = MergeOptions {
                accumulate,
                ..MergeOptions::default()
            };
            for (k, lambdas) in [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]].iter().enumerate() {
                let what = format!("{dtype:?} {accumulate:?} lambdas {lambdas:?}");
                let inputs = MergeInputs {
                    reference: dirs[0].clone(),
                    aligned: dirs[1..].to_vec(),
                    lambdas: lambdas.to_vec(),
                };
                let out = tmp.path().join(format!("out{k}"));
                merge_checkpoints(&inputs, &out, &options, None).unwrap();
                let want = Checkpoint::open(&dirs[k]).unwrap();
                assert_same_tensors(&Checkpoint::open(&out).unwrap(), &want, &what);

                // The in-memory merge holds the same values.
                let map = merge_in_memory(&inputs, &options).unwrap();
                for name in want.names() {
                    let raw = want.raw(name).unwrap();
                    let (values, shape) = map.get(name).unwrap();
                    assert_eq!(shape, raw.shape);
                    let expect = bytes_to_f32(raw.dtype, raw.bytes).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(values), bits(&expect), "{what}: in-memory {name}");
                }
            }
        }
    }
}

#[test]
fn half_precision_output_of_unit_merge_is_exact_after_widening() {
    // bf16 inputs merged at lambda = 1 into an f32 output widen exactly.
    let p = pair(Dtype::BF16);
    let options = MergeOptions {
        dtype: Some(dera_merge::OutDtype::F32),
        ..MergeOptions::default()
    };
    merge_checkpoints(&p.inputs(1.0), &p.out, &options, None).unwrap();
    let (out, aligned) = (
        Checkpoint::open(&p.out).unwrap(),
        Checkpoint::open(&p.aligned).unwrap(),
    );
    for name in aligned.names() {
        assert_eq!(out.raw(name).unwrap().dtype, Dtype::F32);
        assert_eq!(
            out.read_f32(name).unwrap(),
            aligned.read_f32(name).unwrap(),
            "{name}"
        );
    }
}
