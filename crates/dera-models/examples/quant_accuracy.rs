//! How far each weight format moves a model from its f32 self, on real text: mean next-token
//! KL(f32 || format) over every position, top-1 agreement, and greedy agreement of a 64-token
//! continuation (tokens equal up to the first divergence, and position by position).
//!
//! `cargo run --release -p dera-models --example quant_accuracy -- DIR [TEXT_FILE]`
//!
//! `bench/decode/smollm2.py` writes the real SmolLM2-135M-Instruct as `DIR`.

use std::path::PathBuf;

use dera_models::{
    CausalLm, Device, LoadOptions, LoadedModel, Quantization, WeightDtype, load_with,
};

const TEXT: &str = "The history of the printing press begins in the fifteenth century, when \
Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from \
wine making. Within fifty years, presses had spread to more than two hundred cities across \
Europe, and the price of books fell sharply. Scholars could compare identical copies of a text, \
which helped science to grow, while pamphlets carried news and arguments to readers who had \
never owned a book before. Today we can ask a language model to summarise that story in a few \
sentences, and it will usually mention Gutenberg, the Bible he printed, and the Reformation.";

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    row.iter().map(|&v| f64::from(v - max) - sum.ln()).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

fn all_logits(m: &LoadedModel, ids: &[u32]) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let mut cache = m.model.new_cache();
    Ok(m.model
        .forward(ids, 1, &mut cache, true)?
        .try_into_vec_as::<f32>()?)
}

fn greedy(m: &LoadedModel, ids: &[u32], n: usize) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let mut cache = m.model.new_cache();
    let mut last = m
        .model
        .forward(ids, 1, &mut cache, false)?
        .try_into_vec_as::<f32>()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&last) as u32;
        out.push(t);
        last = m
            .model
            .forward(&[t], 1, &mut cache, false)?
            .try_into_vec_as::<f32>()?;
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir: PathBuf = args
        .next()
        .ok_or("usage: quant_accuracy DIR [TEXT_FILE]")?
        .into();
    let text = match args.next() {
        Some(f) => std::fs::read_to_string(f)?,
        None => TEXT.to_string(),
    };
    let device = Device::flex();
    let base = load_with(
        &dir,
        &device,
        &LoadOptions {
            dtype: WeightDtype::F32,
            quantize: None,
            panels: false,
        },
    )?;
    let ids = base.tokenizer()?.encode(&text)?;
    let v = base.model.vocab_size();
    let want = all_logits(&base, &ids)?;
    let prompt = &ids[..ids.len().min(24)];
    let want_greedy = greedy(&base, prompt, 64)?;
    println!(
        "{} tokens of text, greedy continuation of 64 tokens after {} prompt tokens",
        ids.len(),
        prompt.len()
    );
    println!(
        "| weights | mean KL(f32 ‖ fmt) nats | max KL | top-1 agreement | greedy: same prefix | greedy: same position |"
    );
    println!("|---|---|---|---|---|---|");
    let formats = [
        ("bf16", WeightDtype::Bf16, None),
        ("f16", WeightDtype::F16, None),
        ("q8_0", WeightDtype::Auto, Some(Quantization::Q8_0)),
        ("q6_k", WeightDtype::Auto, Some(Quantization::Q6K)),
        ("q5_k", WeightDtype::Auto, Some(Quantization::Q5K)),
        ("q4_k", WeightDtype::Auto, Some(Quantization::Q4K)),
        ("q5_1", WeightDtype::Auto, Some(Quantization::Q5_1)),
        ("q5_0", WeightDtype::Auto, Some(Quantization::Q5_0)),
        ("q4_1", WeightDtype::Auto, Some(Quantization::Q4_1)),
        ("q4_0", WeightDtype::Auto, Some(Quantization::Q4_0)),
    ];
    for (name, dtype, quantize) in formats {
        let opts = LoadOptions {
            dtype,
            quantize,
            panels: false,
        };
        let m = load_with(&dir, &device, &opts)?;
        let got = all_logits(&m, &ids)?;
        let (mut kl_sum, mut kl_max, mut agree) = (0f64, 0f64, 0usize);
        for (p, q) in want.chunks_exact(v).zip(got.chunks_exact(v)) {
            let (lp, lq) = (log_softmax(p), log_softmax(q));
            let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
            kl_sum += kl;
            kl_max = kl_max.max(kl);
            agree += usize::from(argmax(p) == argmax(q));
        }
        let n = ids.len() as f64;
        let g = greedy(&m, prompt, 64)?;
        let prefix = g
            .iter()
            .zip(&want_greedy)
            .take_while(|(a, b)| a == b)
            .count();
        let same = g.iter().zip(&want_greedy).filter(|(a, b)| a == b).count();
        println!(
            "| {name} | {:.5} | {:.4} | {:.1}% | {prefix}/64 | {same}/64 |",
            kl_sum / n,
            kl_max,
            100.0 * agree as f64 / n
        );
    }
    Ok(())
}
