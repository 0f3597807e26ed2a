//! Greedy decoding ms/token of one model and of a two-model DeRa mixture through
//! `Realigner::generate`; the Rust side of `bench/decode/run.sh`.
//!
//! ```text
//! cargo run --release -p dera --example bench_decode -- [--ref DIR --aligned DIR]
//!     [--dtype auto|f32|bf16|f16] [--quantize q8_0|q4_0] [--prompt 32] [--new 64] [--reps 3]
//!     [--layers 30] [--lambda 0.5] [--device flex] [--bandwidth] [--lora ADAPTER_DIR]...
//! ```
//!
//! Without `--ref`, two random SmolLM2-135M-shaped models are built in memory. ms/token is the
//! engine's `Timing::decode_ms_per_token`: wall time from the first mix after the prefill to the
//! last sampled token, divided by the tokens generated (`new` mixes and `new - 1` forward steps of
//! every model), best of `reps` runs after one warm-up run; the configurations run interleaved
//! (one run of each per round). `bench/decode/torch_dera.py` measures the same way.
//! `--bandwidth` measures only the read bandwidth of the thread pool (best of 5 sums over
//! 1 GiB), for the floor `weight bytes / bandwidth`. The RESULT line ends with the process's
//! peak RSS (`VmHWM`).
//!
//! Each `--lora DIR` (a PEFT adapter for the reference, e.g. `make_models.py`'s `lora-r8`) adds
//! DeRa of the reference with "reference + adapter": once with the engine's shared-base pass
//! (reference and adapter rows as one batch over the base weights) and once with
//! `Realigner::set_shared_base(false)` (a pass per model), each against the single model.

#[path = "../benches/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{Shape, prompt, random_weights, share};
use dera::dera_models::{
    LoadOptions, ModelConfig, Quantization, WeightDtype, WeightFormat, load_adapter,
    load_from_source_with, load_with,
};
use dera::{Decoding, DeviceKind, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut prompt_len = 32usize;
    let mut new = 64usize;
    let mut reps = 3usize;
    let mut layers = Shape::SMOLLM2_135M.layers;
    let mut lambda = 0.5f64;
    let mut kind = DeviceKind::Flex;
    let mut dirs: (Option<PathBuf>, Option<PathBuf>) = (None, None);
    let mut options = LoadOptions::default();
    let mut bandwidth = false;
    let mut loras: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bandwidth" {
            bandwidth = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--prompt" => prompt_len = value.parse()?,
            "--new" => new = value.parse()?,
            "--reps" => reps = value.parse()?,
            "--layers" => layers = value.parse()?,
            "--lambda" => lambda = value.parse()?,
            "--device" => kind = value.parse()?,
            "--ref" => dirs.0 = Some(value.into()),
            "--aligned" => dirs.1 = Some(value.into()),
            "--dtype" => options.dtype = value.parse::<WeightDtype>()?,
            "--quantize" => options.quantize = Some(value.parse::<Quantization>()?),
            "--lora" => loras.push(value.into()),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if bandwidth {
        // Measured alone, in its own process, so its 1 GiB buffer is not in a decode run's RSS.
        println!(
            "RESULT bandwidth threads={} bandwidth_gbps={:.3}",
            rayon::current_num_threads(),
            dera::dera_models::read_bandwidth_gbs()
        );
        return Ok(());
    }
    let device = kind.device()?;
    let start = Instant::now();
    let (reference, aligned, cfg) = match dirs.clone() {
        (Some(r), Some(a)) => {
            let cfg = ModelConfig::from_dir(&r)?;
            (
                load_with(&r, &device, &options)?,
                load_with(&a, &device, &options)?,
                cfg,
            )
        }
        _ => {
            let shape = Shape::SMOLLM2_135M.with_layers(layers);
            let dir = std::env::temp_dir();
            let cfg = ModelConfig::from_json(&shape.config_json(), &dir.join("config.json"))?;
            let load = |seed| -> Result<_, Box<dyn std::error::Error>> {
                let w = random_weights(&shape, seed);
                Ok(load_from_source_with(&dir, &cfg, &w, &device, &options)?)
            };
            (load(1)?, load(2)?, cfg)
        }
    };
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let prompt_ids = prompt(prompt_len, cfg.vocab_size);

    // Every configuration decodes the same greedy request; they run interleaved (one run of
    // each per round, `reps` rounds after a warm-up), so a busy machine slows all alike.
    let mut configs: Vec<(String, Realigner, Mixture)> = Vec::new();
    let mut add = |name: String,
                   models: Vec<dera::dera_models::LoadedModel>,
                   mixture: Mixture,
                   shared_base: bool|
     -> Result<(), Box<dyn std::error::Error>> {
        let mut r = Realigner::from_models(models, VocabPolicy::Strict)?;
        r.set_shared_base(shared_base);
        configs.push((name, r, mixture));
        Ok(())
    };
    add(
        "single".into(),
        vec![share(&reference)],
        Mixture::reference_only(),
        true,
    )?;
    add(
        "two_full".into(),
        vec![share(&reference), share(&aligned)],
        Mixture::single(lambda)?,
        true,
    )?;
    for dir in &loras {
        let adapted = load_adapter(&reference, dir)?;
        let models = || vec![share(&reference), share(&adapted)];
        let m = Mixture::single(lambda)?;
        add(
            format!("shared:{}", dir.display()),
            models(),
            m.clone(),
            true,
        )?;
        add(format!("separate:{}", dir.display()), models(), m, false)?;
    }
    let opts = |n| {
        GenerateOptions::new(Decoding {
            stop_on_eos: false,
            ..Decoding::greedy(n)
        })
    };
    let request = |mixture: &Mixture| Request {
        prompt_ids: prompt_ids.clone(),
        mixture: mixture.clone(),
        seed: None,
    };
    for (_, r, m) in &configs {
        r.generate(&[request(m)], &opts(4), |_| {})?; // warm-up
    }
    let mut best = vec![f64::INFINITY; configs.len()];
    for _ in 0..reps.max(1) {
        for ((_, r, m), best) in configs.iter().zip(&mut best) {
            let g = r.generate(&[request(m)], &opts(new), |_| {})?;
            if g[0].tokens.len() != new {
                return Err(format!("generated {} tokens, wanted {new}", g[0].tokens.len()).into());
            }
            *best = best.min(g[0].timing.decode_ms_per_token);
        }
    }
    let (single, dera) = (best[0], best[1]);
    for (k, dir) in loras.iter().enumerate() {
        let (shared, separate) = (best[2 + 2 * k], best[3 + 2 * k]);
        println!(
            "dera lora {}: DeRa shared pass {shared:.2} ms/token ({:.2}x single), separate passes {separate:.2} ms/token ({:.2}x); two full models {dera:.2} ({:.2}x)",
            dir.display(),
            shared / single,
            separate / single,
            dera / single,
        );
        println!(
            "RESULT dera_lora adapter={} single_ms={single:.3} shared_ms={shared:.3} separate_ms={separate:.3} dera2_ms={dera:.3}",
            dir.display()
        );
    }
    let format = options.format_for(stored_dtype(&dirs.0), cfg.hidden_size);
    let bytes = matrix_bytes(&cfg, format);
    let threads = rayon::current_num_threads();
    println!(
        "dera {kind} {format} threads={threads} prompt={prompt_len} new={new} layers={}: single {single:.2} ms/token, DeRa(2) {dera:.2} ms/token, ratio {:.2}; weights {:.1} MB/model",
        cfg.num_layers,
        dera / single,
        bytes as f64 / 1e6,
    );
    println!(
        "RESULT dera format={format} threads={threads} single_ms={single:.3} dera2_ms={dera:.3} weight_bytes={bytes} load_ms={load_ms:.1} peak_rss_mb={:.1}",
        peak_rss_mb()
    );
    Ok(())
}

/// The stored dtype of the reference's embedding (what `--dtype auto` keeps); f32 in memory.
fn stored_dtype(dir: &Option<PathBuf>) -> dera_checkpoint::Dtype {
    dir.as_ref()
        .and_then(|d| dera_checkpoint::Checkpoint::open(d).ok())
        .and_then(|c| c.stored("model.embed_tokens.weight"))
        .map_or(dera_checkpoint::Dtype::F32, |t| t.dtype)
}

/// Bytes of every weight matrix of one model in `format` (norms excluded): what a decode step
/// reads once per token.
fn matrix_bytes(cfg: &ModelConfig, format: WeightFormat) -> usize {
    let (d, hd) = (cfg.hidden_size, cfg.head_dim);
    let (qd, kvd, ff, v) = (
        cfg.num_heads * hd,
        cfg.num_kv_heads * hd,
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let row = |cols: usize| format.row_bytes(cols).unwrap_or(cols * 4);
    let layer = (qd + 2 * kvd) * row(d) + d * row(qd) + 2 * ff * row(d) + d * row(ff);
    let head = if cfg.tie_word_embeddings { 1 } else { 2 };
    cfg.num_layers * layer + head * v * row(d)
}

/// Peak resident set size of this process (`VmHWM`), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
