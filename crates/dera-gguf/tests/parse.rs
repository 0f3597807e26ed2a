//! The parser against corrupt and truncated files: every malformed header is an error naming
//! what is wrong, never a panic or an allocation the file cannot back.

use std::io::Write;

use dera_gguf::{GgmlType, GgufError, GgufFile, Value};
use proptest::prelude::*;

/// A minimal GGUF writer for building test files.
#[derive(Default)]
struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Writer {
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        string(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        string(&mut self.kv, key);
        self.kv.extend(8u32.to_le_bytes());
        string(&mut self.kv, v);
        self.n_kv += 1;
        self
    }
    fn kv_strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
        string(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            string(&mut self.kv, s);
        }
        self.n_kv += 1;
        self
    }
    /// A tensor with ggml dims `ne` (innermost first) and raw bytes.
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        string(&mut self.infos, name);
        self.infos.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.n_tensors += 1;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample() -> Writer {
    let mut w = Writer::default();
    w.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_strs("tokenizer.ggml.tokens", &["a", "b", "c"]);
    w.tensor("norm.weight", &[4], 0, &f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
    let mut q8 = vec![0u8; 34 * 2];
    q8[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    q8[2] = 6;
    w.tensor("m.weight", &[32, 2], 8, &q8);
    w
}

fn open(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    let mut f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    GgufFile::open(f.path())
}

fn err(bytes: &[u8]) -> String {
    open(bytes)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "parsed".into())
}

#[test]
fn a_valid_file_parses() {
    let g = open(&sample().bytes()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get("llama.block_count"), Some(&Value::U64(1)));
    assert_eq!(
        g.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    let m = g.tensor("m.weight").unwrap();
    assert_eq!((m.shape.clone(), m.ty), (vec![2, 32], GgmlType::Q8_0));
    let (v, shape) = g.read_f32("m.weight").unwrap();
    assert_eq!(shape, vec![2, 32]);
    assert_eq!(v[0], 3.0);
    assert_eq!(
        g.read_f32("norm.weight").unwrap().0,
        vec![1.0, 2.0, 3.0, 4.0]
    );
    assert!(
        g.read_f32("missing")
            .unwrap_err()
            .to_string()
            .contains("`missing`")
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().bytes();
    for len in 0..bytes.len() - 1 {
        // The last tensor's padding is not part of it; cut inside the data or header.
        let e = open(&bytes[..len]);
        let last_data_end = bytes.len() - 32 + 34 * 2 - 64;
        if len < last_data_end {
            assert!(
                e.is_err(),
                "a file cut to {len} of {} bytes parsed",
                bytes.len()
            );
        }
    }
}

#[test]
fn corrupt_headers_name_the_problem() {
    let good = sample().bytes();
    let table: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", [b"GGUX".as_slice(), &good[4..]].concat(), "magic"),
        (
            "version 1",
            [&good[..4], &1u32.to_le_bytes()[..], &good[8..]].concat(),
            "version",
        ),
        (
            "huge tensor count",
            [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat(),
            "tensor_count",
        ),
        (
            "huge kv count",
            [&good[..16], &(1u64 << 40).to_le_bytes()[..], &good[24..]].concat(),
            "metadata_kv_count",
        ),
        (
            "huge key length",
            [&good[..24], &(u64::MAX / 2).to_le_bytes()[..], &good[32..]].concat(),
            "metadata key #0",
        ),
    ];
    for (what, bytes, needle) in table {
        let e = err(&bytes);
        assert!(e.contains(needle), "{what}: {e}");
    }
}

#[test]
fn bad_tensor_infos_are_errors() {
    // Unsupported type.
    let mut w = Writer::default();
    w.tensor("t", &[32], 99, &[0; 32]);
    assert!(err(&w.bytes()).contains("`t`"), "{}", err(&w.bytes()));
    // Rows that are not whole blocks.
    let mut w = Writer::default();
    w.tensor("t", &[16, 2], 8, &[0; 64]);
    assert!(err(&w.bytes()).contains("whole Q8_0 blocks"));
    // Too many dimensions, zero dimensions.
    let mut w = Writer::default();
    w.tensor("t", &[1, 1, 1, 1, 1], 0, &[0; 4]);
    assert!(err(&w.bytes()).contains("dimensions"));
    let mut w = Writer::default();
    w.tensor("t", &[], 0, &[0; 4]);
    assert!(err(&w.bytes()).contains("dimensions"));
    // Data past the end.
    let mut w = Writer::default();
    w.tensor("t", &[1024], 0, &[0; 32]);
    assert!(err(&w.bytes()).contains("past the end"));
    // Overflowing shape.
    let mut w = Writer::default();
    w.tensor("t", &[u64::MAX / 2, 4], 0, &[0; 32]);
    assert!(err(&w.bytes()).contains("`t`"));
    // Duplicate names.
    let mut w = Writer::default();
    w.tensor("t", &[8], 0, &[0; 32])
        .tensor("t", &[8], 0, &[0; 32]);
    assert!(err(&w.bytes()).contains("twice"));
    // Misaligned offset.
    let mut bytes = {
        let mut w = Writer::default();
        w.tensor("t", &[8], 0, &[0; 32]);
        w.bytes()
    };
    let off_pos = 24 + 8 + 1 + 4 + 8 + 4;
    bytes[off_pos] = 3;
    assert!(err(&bytes).contains("alignment"), "{}", err(&bytes));
}

#[test]
fn bad_metadata_is_an_error() {
    let mut w = Writer::default();
    w.kv_u32("general.alignment", 24);
    assert!(err(&w.bytes()).contains("general.alignment"));
    let mut w = Writer::default();
    w.kv_u32("a", 1).kv_u32("a", 2);
    assert!(err(&w.bytes()).contains("twice"));
    // An array claiming more elements than the file holds.
    let mut w = Writer::default();
    string(&mut w.kv, "arr");
    w.kv.extend(9u32.to_le_bytes());
    w.kv.extend(4u32.to_le_bytes());
    w.kv.extend((1u64 << 40).to_le_bytes());
    w.n_kv = 1;
    assert!(err(&w.bytes()).contains("`arr`"));
    // Unknown value type, invalid UTF-8, a bad boolean.
    let mut w = Writer::default();
    string(&mut w.kv, "x");
    w.kv.extend(77u32.to_le_bytes());
    w.n_kv = 1;
    assert!(err(&w.bytes()).contains("unknown value type"));
    let mut w = Writer::default();
    string(&mut w.kv, "x");
    w.kv.extend(8u32.to_le_bytes());
    w.kv.extend(2u64.to_le_bytes());
    w.kv.extend([0xFF, 0xFE]);
    w.n_kv = 1;
    assert!(err(&w.bytes()).contains("UTF-8"));
    let mut w = Writer::default();
    string(&mut w.kv, "x");
    w.kv.extend(7u32.to_le_bytes());
    w.kv.push(2);
    w.n_kv = 1;
    assert!(err(&w.bytes()).contains("boolean"));
}

#[test]
fn fixture_headers_truncated_are_errors() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gguf/llama_q8_0.gguf");
    let bytes = std::fs::read(path).unwrap();
    let full = open(&bytes).unwrap();
    let header_end = full.tensors().iter().map(|t| t.range.start).min().unwrap();
    for len in (0..header_end).step_by(97) {
        assert!(open(&bytes[..len]).is_err(), "cut at {len}");
    }
    assert!(open(&bytes[..bytes.len() - 1]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random byte flips in a valid file never panic (they parse or give an error).
    #[test]
    fn flipped_bytes_never_panic(flips in prop::collection::vec((0usize..400, any::<u8>()), 1..8)) {
        let mut bytes = sample().bytes();
        for (pos, b) in flips {
            let n = bytes.len();
            bytes[pos % n] = b;
        }
        if let Ok(g) = open(&bytes) {
            for t in g.tensors().to_vec() {
                let _ = g.read_f32(&t.name);
            }
        }
    }
}
