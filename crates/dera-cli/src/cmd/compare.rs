//! `dera compare`: logit mixing against the weight-merged model.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use dera::dera_models::{ModelConfig, load_from_source};
use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, VocabPolicy, kl_divergence};
use dera_merge::{MergeInputs, MergeOptions};

use crate::args::{Format, ModelArgs, Presentation, prompt_ids};

/// Decode with logit mixing and with the weight-merged model, and measure how far they drift.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    show: Presentation,
    /// JSONL file, one {"prompt": "..."} per line.
    #[arg(long, value_name = "FILE.jsonl")]
    prompts: PathBuf,
    /// Greedy tokens decoded per prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
}

/// Runs the command.
pub fn run(a: &Args) -> Result<()> {
    let mixture = a.models.mixture()?;
    let prompts: Vec<String> = crate::checks::read_jsonl(&a.prompts)?
        .into_iter()
        .map(|(n, v)| {
            v.get("prompt")
                .and_then(|p| p.as_str())
                .map(str::to_string)
                .with_context(|| format!("{}:{n}: no \"prompt\"", a.prompts.display()))
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(!prompts.is_empty(), "{}: no prompts", a.prompts.display());
    let dirs: Vec<&PathBuf> = std::iter::once(&a.models.reference)
        .chain(&a.models.aligned)
        .collect();
    crate::checks::new_tokens_fit(&dirs, a.max_new_tokens, "--max-new-tokens")?;
    let logit = a.models.load()?;
    let device = a.models.device.device()?;
    // Adapter folders join the merge as low-rank updates of the reference.
    let mut inputs = MergeInputs {
        reference: a.models.reference.clone(),
        aligned: Vec::new(),
        lambdas: Vec::new(),
    };
    let mut adapters = Vec::new();
    for (dir, &lambda) in a.models.aligned.iter().zip(mixture.lambdas()) {
        if dera_lora::is_adapter_dir(dir) {
            adapters.push((dera_lora::Adapter::open(dir)?, lambda));
        } else {
            inputs.aligned.push(dir.clone());
            inputs.lambdas.push(lambda);
        }
    }
    let adapters: Vec<(&dera_lora::Adapter, f64)> = adapters.iter().map(|(a, l)| (a, *l)).collect();
    // --truncate-vocab applies to both sides: the merge keeps the rows every model has, and
    // both are mixed over the reference tokenizer's vocabulary.
    let (merge_vocab, policy) = if a.models.truncate_vocab {
        (
            dera_merge::VocabPolicy::TruncateToSmallest,
            VocabPolicy::TruncateToTokenizer,
        )
    } else {
        (dera_merge::VocabPolicy::Strict, VocabPolicy::Strict)
    };
    let merged_weights = dera_merge::merge_in_memory_with(
        &inputs,
        &adapters,
        &MergeOptions {
            dtype: Some(dera_merge::OutDtype::F32),
            vocab: merge_vocab,
            ..Default::default()
        },
    )?;
    let mut cfg = ModelConfig::from_dir(&a.models.reference)?;
    if let Some(rows) = merged_vocab_rows(&merged_weights) {
        cfg.vocab_size = rows;
    }
    let merged = load_from_source(&a.models.reference, &cfg, &merged_weights, &device)?;
    let merged = Realigner::from_models(vec![merged], policy)?;
    anyhow::ensure!(
        merged.width() == logit.width(),
        "the merged model mixes {} logits but the logit mixture {}",
        merged.width(),
        logit.width()
    );
    let only = Mixture::reference_only();
    let opts = GenerateOptions::new(Decoding::greedy(a.max_new_tokens));

    let mut rows = Vec::new();
    for p in &prompts {
        let ids = prompt_ids(&logit, p, a.show.chat)?;
        let t0 = Instant::now();
        let g = logit.generate(
            &[Request {
                prompt_ids: ids.clone(),
                mixture: mixture.clone(),
                seed: None,
            }],
            &opts,
            |_| {},
        )?;
        let logit_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let gm = merged.generate(
            &[Request {
                prompt_ids: ids.clone(),
                mixture: only.clone(),
                seed: None,
            }],
            &opts,
            |_| {},
        )?;
        let merged_s = t0.elapsed().as_secs_f64();
        let tokens = &g[0].tokens;
        let (kl, agree) = if tokens.is_empty() {
            (Vec::new(), 0.0)
        } else {
            let (mix_rows, _) = logit.trajectory_log_probs(&ids, tokens, &mixture)?;
            let (merged_rows, _) = merged.trajectory_log_probs(&ids, tokens, &only)?;
            let kl: Vec<f64> = mix_rows
                .iter()
                .zip(&merged_rows)
                .map(|(m, w)| kl_divergence(m, w))
                .collect();
            let argmax = |r: &Vec<f32>| dera::dera_logits::sampler::argmax(r);
            let same = mix_rows
                .iter()
                .zip(&merged_rows)
                .filter(|(m, w)| argmax(m) == argmax(w))
                .count();
            (kl, same as f64 / tokens.len() as f64)
        };
        let mean_kl = if kl.is_empty() {
            0.0
        } else {
            kl.iter().sum::<f64>() / kl.len() as f64
        };
        rows.push(serde_json::json!({
            "prompt": p,
            "lambdas": mixture.lambdas(),
            "tokens": tokens.len(),
            "logit_mix_text": g[0].text,
            "weight_merge_text": gm[0].text,
            "kl_per_token": kl,
            "mean_kl": mean_kl,
            "greedy_agreement": agree,
            "logit_mix_tokens_per_s": g[0].tokens.len() as f64 / logit_s,
            "weight_merge_tokens_per_s": gm[0].tokens.len() as f64 / merged_s,
        }));
    }
    let mut out = std::io::stdout().lock();
    match a.show.format {
        Format::Json => writeln!(out, "{}", serde_json::json!({ "results": rows }))?,
        Format::Text => {
            writeln!(
                out,
                "{:<32} {:>6} {:>10} {:>9} {:>12} {:>12}",
                "prompt", "tokens", "mean KL", "agree", "logit tok/s", "merge tok/s"
            )?;
            for r in &rows {
                let p: String = r["prompt"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(32)
                    .collect();
                writeln!(
                    out,
                    "{:<32} {:>6} {:>10.5} {:>8.1}% {:>12.1} {:>12.1}",
                    p,
                    r["tokens"],
                    r["mean_kl"].as_f64().unwrap_or(0.0),
                    100.0 * r["greedy_agreement"].as_f64().unwrap_or(0.0),
                    r["logit_mix_tokens_per_s"].as_f64().unwrap_or(0.0),
                    r["weight_merge_tokens_per_s"].as_f64().unwrap_or(0.0),
                )?;
            }
        }
    }
    Ok(())
}

/// The embedding rows of a merge (fewer than the config's `vocab_size` after truncation).
fn merged_vocab_rows(weights: &dera_merge::TensorMap) -> Option<usize> {
    ["model.embed_tokens.weight", "transformer.wte.weight"]
        .iter()
        .find_map(|n| weights.get(n))
        .and_then(|(_, shape)| shape.first().copied())
}
