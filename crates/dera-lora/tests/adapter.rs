//! Reading adapter folders: the golden fixtures, refusals by name, the written round trip, and
//! the low-rank algebra (proptest).

use std::path::{Path, PathBuf};

use dera_lora::{Adapter, LoraPair, is_adapter_dir};
use proptest::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Writes an adapter folder with `config` and f32 tensors `(name, shape)` filled with 0.5.
fn write_adapter(dir: &Path, config: serde_json::Value, tensors: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let bytes = (0..count).flat_map(|_| 0.5f32.to_le_bytes()).collect();
            (n.to_string(), bytes, s.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
}

/// Tensor names and shapes of a test adapter.
type Tensors<'a> = Vec<(&'a str, Vec<usize>)>;

fn config() -> serde_json::Value {
    json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"})
}

const A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

#[test]
fn golden_adapters_open_with_their_settings() {
    let dir = fixtures().join("lora/adapters/llama_all_r8_rslora");
    assert!(is_adapter_dir(&dir));
    assert!(!is_adapter_dir(&fixtures().join("golden/models/llama")));
    let a = Adapter::open(&dir).unwrap();
    assert_eq!(a.config.r, 8);
    assert!(a.config.use_rslora);
    assert!((a.scale() - 16.0 / 8f32.sqrt()).abs() < 1e-6);
    assert_eq!(a.modules.len(), 14); // 7 projections x 2 layers
    let q = &a.modules["model.layers.1.self_attn.q_proj"];
    assert_eq!((q.rank, q.in_features, q.out_features), (8, 64, 64));
    assert!(q.b.iter().any(|&x| x != 0.0));
    let regex = Adapter::open(&fixtures().join("lora/adapters/qwen2_regex_r3")).unwrap();
    let names: Vec<&str> = regex.modules.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "model.layers.1.mlp.down_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    // Shapes against the reference: right for Llama, wrong with a module named otherwise.
    let ckpt = dera_checkpoint::Checkpoint::open(&fixtures().join("golden/models/llama")).unwrap();
    let shape_of = |n: &str| ckpt.raw(n).ok().map(|r| r.shape.to_vec());
    a.check_against(&shape_of).unwrap();
    let wrong = |n: &str| {
        if n.ends_with("down_proj.weight") {
            Some(vec![64, 99])
        } else {
            shape_of(n)
        }
    };
    let e = a.check_against(&wrong).unwrap_err().to_string();
    assert!(e.contains("mlp.down_proj") && e.contains("[64, 99]"), "{e}");
    let e = a.check_against(&|_| None).unwrap_err().to_string();
    assert!(e.contains("has no tensor"), "{e}");
}

#[test]
fn malformed_adapters_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(serde_json::Value, Tensors<'_>, &str)> = vec![
        (config(), vec![(A, vec![2, 8])], "lora_B.weight"),
        (config(), vec![(A, vec![3, 8]), (B, vec![8, 3])], "rank 3"),
        (
            config(),
            vec![
                (A, vec![2, 8]),
                (B, vec![8, 2]),
                (
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                    vec![8],
                ),
            ],
            "DoRA",
        ),
        (
            config(),
            vec![
                (
                    "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
                    vec![2, 8],
                ),
                (
                    "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
                    vec![8, 2],
                ),
            ],
            "not among the target_modules",
        ),
        (
            config(),
            vec![("model.layers.0.q_proj.weight", vec![8, 8])],
            "base_model.model.",
        ),
        (
            config(),
            vec![(A, vec![2, 8, 1]), (B, vec![8, 2])],
            "not a matrix",
        ),
        (config(), vec![], "no lora_A"),
    ];
    for (i, (cfg, tensors, needle)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("a{i}"));
        write_adapter(&dir, cfg, &tensors);
        let e = Adapter::open(&dir).unwrap_err().to_string();
        assert!(e.contains(needle), "case {i}: {e}");
    }
    let dir = tmp.path().join("nofile");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config().to_string()).unwrap();
    std::fs::write(dir.join("adapter_model.bin"), b"pickle").unwrap();
    let e = Adapter::open(&dir).unwrap_err().to_string();
    assert!(e.contains("safe_serialization"), "{e}");
    std::fs::write(dir.join("adapter_config.json"), "x".repeat(2 << 20)).unwrap();
    let e = Adapter::open(&dir).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn written_adapters_read_back_and_respect_the_output_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("lora/adapters/llama_attn_r4");
    let a = Adapter::open(&src).unwrap();
    let out = tmp.path().join("scaled");
    a.scaled(-0.5).write(&out, false, &[&src]).unwrap();
    let b = Adapter::open(&out).unwrap();
    assert_eq!(b.config.r, a.config.r);
    for (m, p) in &a.modules {
        let q = &b.modules[m];
        assert_eq!(p.a, q.a);
        assert!(p.b.iter().zip(&q.b).all(|(x, y)| *y == -0.5 * x));
    }
    let e = a.write(&out, false, &[&src]).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    a.write(&out, true, &[&src]).unwrap();
    let e = a.write(&src, true, &[&src]).unwrap_err().to_string();
    assert!(e.contains("input"), "{e}");
}

fn pair(rank: usize, inp: usize, out: usize, seed: u64) -> LoraPair {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % 2001) as f32 / 1000.0 - 1.0
    };
    LoraPair {
        rank,
        in_features: inp,
        out_features: out,
        a: (0..rank * inp).map(|_| next()).collect(),
        b: (0..out * rank).map(|_| next()).collect(),
    }
}

fn reference_delta(p: &LoraPair, scale: f64) -> Vec<f64> {
    let mut d = vec![0f64; p.out_features * p.in_features];
    for o in 0..p.out_features {
        for j in 0..p.in_features {
            let s: f64 = (0..p.rank)
                .map(|k| f64::from(p.b[o * p.rank + k]) * f64::from(p.a[k * p.in_features + j]))
                .sum();
            d[o * p.in_features + j] = scale * s;
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any chunking of either layout gives `scale * B A` (compared with an f64 product).
    #[test]
    fn delta_chunks_and_layouts(rank in 1usize..6, inp in 1usize..9, out in 1usize..9,
                                seed in 0u64..1000, chunk in 1usize..20, scale in -3.0f32..3.0) {
        let p = pair(rank, inp, out, seed);
        let want = reference_delta(&p, f64::from(scale));
        let n = inp * out;
        let mut straight = vec![0f32; n];
        let mut transposed = vec![0f32; n];
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            p.add_delta(scale, false, start, &mut straight[start..end]);
            p.add_delta(scale, true, start, &mut transposed[start..end]);
        }
        for o in 0..out {
            for j in 0..inp {
                let w = want[o * inp + j];
                prop_assert!((f64::from(straight[o * inp + j]) - w).abs() <= 1e-5 * (1.0 + w.abs()));
                prop_assert!((f64::from(transposed[j * out + o]) - w).abs() <= 1e-5 * (1.0 + w.abs()));
            }
        }
    }

    /// A stacked adapter computes `sum_i lambda_i * scale_i * B_i A_i`; `scaled` is linear.
    #[test]
    fn stacking_adds_scaled_updates(l1 in -2.0f32..2.0, l2 in -2.0f32..2.0, seed in 0u64..1000) {
        let base = Adapter::open(&fixtures().join("lora/adapters/llama_attn_r4")).unwrap();
        let other = Adapter::open(&fixtures().join("lora/adapters/llama_mlp_r2")).unwrap();
        let mut first = base.clone();
        // Perturb A so that seeds matter.
        for p in first.modules.values_mut() {
            p.a.iter_mut().enumerate().for_each(|(i, x)| *x += ((i as u64 * 31 + seed) % 7) as f32 * 1e-3);
        }
        let stacked = Adapter::stack(&[(&first, l1), (&other, l2)]).unwrap();
        prop_assert_eq!(stacked.config.r, 6);
        prop_assert!((stacked.scale() - 1.0).abs() < 1e-7);
        prop_assert_eq!(stacked.modules.len(), first.modules.len() + other.modules.len());
        for (m, p) in &stacked.modules {
            let mut want = vec![0f32; p.in_features * p.out_features];
            for (ad, l) in [(&first, l1), (&other, l2)] {
                if let Some(q) = ad.modules.get(m) {
                    q.add_delta(l * ad.scale(), false, 0, &mut want);
                }
            }
            let got = p.delta(stacked.scale());
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{m}: {g} vs {w}");
            }
            if let Some(q) = first.modules.get(m) {
                let scaled = first.scaled(l1);
                let d = scaled.modules[m].delta(first.scale());
                let w = q.delta(first.scale() * l1);
                for (g, w) in d.iter().zip(&w) {
                    prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()));
                }
            }
        }
    }
}
