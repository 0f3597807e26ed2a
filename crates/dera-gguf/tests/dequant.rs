//! Dequantization of every supported tensor type against the `gguf` Python package's
//! `dequantize` (values recorded by `scripts/golden/generate_gguf.py`).

use std::path::{Path, PathBuf};

use dera_gguf::{GgmlType, GgufFile, dequantize};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

#[test]
fn every_type_matches_the_python_dequantizer() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let cases = expected["dequant"].as_object().unwrap();
    let mut seen: Vec<&str> = cases.keys().map(String::as_str).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            "BF16", "F16", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0",
            "Q5_1", "Q5_K", "Q6_K", "Q8_0"
        ],
        "the fixtures cover every quantized type"
    );
    for (ty, case) in cases {
        let file = GgufFile::open(&fixtures().join(case["file"].as_str().unwrap())).unwrap();
        let name = case["tensor"].as_str().unwrap();
        assert_eq!(file.tensor(name).unwrap().ty.name(), *ty);
        let (values, _) = file.read_f32(name).unwrap();
        let want: Vec<f32> = case["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        for (i, (a, b)) in values.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits() & 0x7FFF_FFFF,
                b.to_bits() & 0x7FFF_FFFF,
                "{ty} `{name}` value {i}: {a} vs {b}"
            );
        }
        let sum: f64 = values.iter().map(|&x| f64::from(x)).sum();
        let want_sum = case["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-9 * want_sum.abs().max(1.0),
            "{ty} `{name}`: sum {sum} vs {want_sum}"
        );
    }
}

#[test]
fn k_quant_rows_must_be_whole_super_blocks() {
    let mut out = vec![0f32; 128];
    assert!(dequantize(GgmlType::Q4K, &[0; 72], &mut out).is_err());
    let mut out = vec![0f32; 256];
    assert!(dequantize(GgmlType::Q6K, &[0; 210], &mut out).is_ok());
}
