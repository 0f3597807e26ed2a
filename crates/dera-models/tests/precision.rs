//! Weight formats on the CPU kernels: the same numbers as the widened tensors on another
//! backend, quantization close to f32, and bit-identical results at any thread count.

use std::path::{Path, PathBuf};

use dera_models::{
    CausalLm, Device, LoadOptions, LoadedModel, Quantization, WeightDtype, load_with,
};

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/models")
        .join(name)
}

/// Token ids of a short text (the fixtures' tokenizer).
const IDS: [u32; 12] = [1, 45, 112, 7, 300, 20, 18, 250, 3, 99, 64, 5];

fn logits(m: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut cache = m.model.new_cache();
    m.model
        .forward(ids, 1, &mut cache, true)
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn options(dtype: WeightDtype, quantize: Option<Quantization>) -> LoadOptions {
    LoadOptions {
        dtype,
        quantize,
        panels: false,
    }
}

fn all_options() -> Vec<LoadOptions> {
    vec![
        options(WeightDtype::Auto, None),
        options(WeightDtype::F32, None),
        options(WeightDtype::Bf16, None),
        options(WeightDtype::F16, None),
        options(WeightDtype::Auto, Some(Quantization::Q8_0)),
        options(WeightDtype::Auto, Some(Quantization::Q4_0)),
        options(WeightDtype::Auto, Some(Quantization::Q4_1)),
        options(WeightDtype::Auto, Some(Quantization::Q5_0)),
        options(WeightDtype::Auto, Some(Quantization::Q5_1)),
    ]
}

/// Every format computed by the CPU kernels (flex) equals the same rounded/quantized weights
/// widened to f32 tensors and multiplied by burn-ndarray, to f32 summation-order noise.
#[test]
fn kernels_match_widened_weights_on_ndarray() {
    let Ok(nd) = dera_models::DeviceKind::Ndarray.device() else {
        return;
    };
    for name in ["llama", "qwen2", "gpt2", "llama_bf16", "mistral"] {
        for opts in all_options() {
            let host = load_with(&model_dir(name), &Device::flex(), &opts).unwrap();
            let wide = load_with(&model_dir(name), &nd, &opts).unwrap();
            let v = host.model.vocab_size();
            let ids: Vec<u32> = IDS.iter().map(|&i| i % v as u32).collect();
            let (a, b) = (logits(&host, &ids), logits(&wide, &ids));
            let d = max_diff(&a, &b);
            // Block formats on AVX2/AVX-512 multiply activations rounded to 16 bits per block
            // (2^-16 of the block's largest value): a relative 1e-3 of the logits at most here.
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let bound = if opts.quantize.is_some() {
                2e-5 + 1e-3 * scale
            } else {
                2e-5
            };
            assert!(
                d <= bound,
                "{name} {opts:?}: max |diff| {d} (bound {bound})"
            );
        }
    }
}

/// Relative RMS error of the logits against the f32 model: f16 < bf16 and q8_0 < q4_0, each
/// under a bound (tiny random models are harsher on 4-bit blocks than real ones).
#[test]
fn reduced_precision_stays_close_to_f32() {
    let rel = |a: &[f32], b: &[f32]| {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den).sqrt()
    };
    for name in ["llama", "qwen2"] {
        let f32m = load_with(&model_dir(name), &Device::flex(), &LoadOptions::default()).unwrap();
        let base = logits(&f32m, &IDS);
        let err = |opts: LoadOptions| {
            let m = load_with(&model_dir(name), &Device::flex(), &opts).unwrap();
            rel(&logits(&m, &IDS), &base)
        };
        let f16 = err(options(WeightDtype::F16, None));
        let bf16 = err(options(WeightDtype::Bf16, None));
        let q8 = err(options(WeightDtype::Auto, Some(Quantization::Q8_0)));
        let q4 = err(options(WeightDtype::Auto, Some(Quantization::Q4_0)));
        let q41 = err(options(WeightDtype::Auto, Some(Quantization::Q4_1)));
        let q50 = err(options(WeightDtype::Auto, Some(Quantization::Q5_0)));
        let q51 = err(options(WeightDtype::Auto, Some(Quantization::Q5_1)));
        eprintln!(
            "{name}: relative RMS error f16 {f16:.2e} bf16 {bf16:.2e} q8_0 {q8:.2e} q4_0 {q4:.2e} q4_1 {q41:.2e} q5_0 {q50:.2e} q5_1 {q51:.2e}"
        );
        // A fifth bit halves the step: each 5-bit format below its 4-bit one.
        assert!(
            q8 < q51 && q51 < q41 && q50 < q4,
            "{name}: q8_0 {q8}, q5_1 {q51}, q4_1 {q41}, q5_0 {q50}, q4_0 {q4}"
        );
        // Q4_1's minimum fits a block's range better than Q4_0's symmetric grid.
        assert!(
            q8 < q41 && q41 < q4,
            "{name}: q8_0 {q8}, q4_1 {q41}, q4_0 {q4}"
        );
        assert!(
            0.0 < f16 && f16 < bf16 && bf16 < 0.02,
            "{name}: f16 {f16}, bf16 {bf16}"
        );
        assert!(
            0.0 < q8 && q8 < q4 && q8 < 0.05 && q4 < 0.6,
            "{name}: q8_0 {q8}, q4_0 {q4}"
        );
    }
}

/// The same logits, to the bit, with 1, 2 and 3 threads, and one row alone or in a batch.
#[test]
fn bit_identical_across_thread_counts_and_batches() {
    for opts in all_options() {
        let m = load_with(&model_dir("llama"), &Device::flex(), &opts).unwrap();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| logits(&m, &IDS))
        };
        let one = run(1);
        for t in [2, 3] {
            let other = run(t);
            assert!(
                one.iter()
                    .zip(&other)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{opts:?}: {t} threads differ from 1"
            );
        }
        // Decode step of one row vs the same row next to another one in a batch of 2.
        let mut c1 = m.model.new_cache();
        let alone = m
            .model
            .forward(&IDS[..5], 1, &mut c1, false)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        let mut c2 = m.model.new_cache();
        let mut two = IDS[..5].to_vec();
        two.extend_from_slice(&IDS[5..10]);
        let batch = m
            .model
            .forward(&two, 2, &mut c2, false)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        let d = max_diff(&alone, &batch[..alone.len()]);
        assert!(d <= 1e-5, "{opts:?}: batched row differs by {d}");
    }
}

/// A checkpoint stored in bf16 loaded as stored gives what transformers computes in f32 from
/// those bf16 weights (the golden fixture), and `--dtype f32` (widened copy) the same numbers.
#[test]
fn bf16_as_stored_equals_widened() {
    let dir = model_dir("llama_bf16");
    let auto = load_with(&dir, &Device::flex(), &LoadOptions::default()).unwrap();
    let wide = load_with(&dir, &Device::flex(), &options(WeightDtype::F32, None)).unwrap();
    let d = max_diff(&logits(&auto, &IDS), &logits(&wide, &IDS));
    assert!(d <= 1e-5, "bf16 in place vs widened: {d}");
}

/// The K-quants on a model whose rows are whole 256-weight super-blocks: the logits' relative RMS error against f32 orders as the
/// bits per weight do (q8_0 < q6_k < q5_k < q4_k, and q4_k below q4_0), and the CPU kernels
/// equal the same weights widened on ndarray.
#[test]
fn k_quants_fit_between_the_block_formats() {
    use dera_models::testing::{Shape, prompt, random_model_with};
    let shape = Shape {
        vocab: 320,
        hidden: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        intermediate: 512,
    };
    let ids = prompt(10, shape.vocab);
    let load = |q: Option<Quantization>, device: &Device| {
        random_model_with(&shape, 3, device, &options(WeightDtype::Auto, q)).unwrap()
    };
    let base = logits(&load(None, &Device::flex()), &ids);
    let rel = |q: Quantization| {
        let got = logits(&load(Some(q), &Device::flex()), &ids);
        let num: f64 = got
            .iter()
            .zip(&base)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum();
        let den: f64 = base.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den).sqrt()
    };
    let [q8, q6, q5, q4k, q4] = [
        Quantization::Q8_0,
        Quantization::Q6K,
        Quantization::Q5K,
        Quantization::Q4K,
        Quantization::Q4_0,
    ]
    .map(rel);
    eprintln!(
        "relative RMS error q8_0 {q8:.2e} q6_k {q6:.2e} q5_k {q5:.2e} q4_k {q4k:.2e} q4_0 {q4:.2e}"
    );
    assert!(
        0.0 < q8 && q8 < q6 && q6 < q5 && q5 < q4k && q4k < q4,
        "q8_0 {q8}, q6_k {q6}, q5_k {q5}, q4_k {q4k}, q4_0 {q4}"
    );
    let Ok(nd) = dera_models::DeviceKind::Ndarray.device() else {
        return;
    };
    for q in [Quantization::Q4K, Quantization::Q5K, Quantization::Q6K] {
        let (a, b) = (
            logits(&load(Some(q), &Device::flex()), &ids),
            logits(&load(Some(q), &nd), &ids),
        );
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        // K-quants are widened to f32 in registers: summation-order noise only.
        assert!(d <= 2e-5 + 1e-5 * scale, "{q}: max |diff| {d}");
    }
}

/// The format each `--quantize` gives a matrix: K-quant rows must be whole super-blocks (else
/// the fallback), the head takes Q6_K (Q8_0 when its rows are not), and rows that fit no block
/// keep the dtype.
#[test]
fn k_quant_formats_and_their_fallbacks() {
    use dera_checkpoint::Dtype;
    use dera_models::WeightFormat as F;
    let f = |q, cols, head| {
        options(WeightDtype::Auto, Some(q)).format_for_tensor(Dtype::F32, cols, head)
    };
    for (q, body, body_576) in [
        (Quantization::Q4K, F::Q4K, F::Q5_0),
        (Quantization::Q5K, F::Q5K, F::Q5_1),
        (Quantization::Q6K, F::Q6K, F::Q8_0),
    ] {
        assert_eq!(f(q, 512, false), body, "{q}");
        assert_eq!(
            f(q, 576, false),
            body_576,
            "{q}: 576 is not whole super-blocks"
        );
        assert_eq!(f(q, 512, true), F::Q6K, "{q} head");
        assert_eq!(f(q, 576, true), F::Q8_0, "{q} head of 576");
        assert_eq!(f(q, 100, false), F::F32, "{q}: 100 fits no block");
    }
    assert_eq!("Q4_K".parse::<Quantization>().unwrap(), Quantization::Q4K);
    let e = "q3_k".parse::<Quantization>().unwrap_err().to_string();
    assert!(e.contains("q4_k, q5_k or q6_k"), "{e}");
    // The 5-bit blocks: the head in Q8_0, as for q4_0 / q4_1.
    for (q, f32_format) in [(Quantization::Q5_0, F::Q5_0), (Quantization::Q5_1, F::Q5_1)] {
        assert_eq!(f(q, 576, false), f32_format, "{q}");
        assert_eq!(f(q, 576, true), F::Q8_0, "{q} head");
    }
}
