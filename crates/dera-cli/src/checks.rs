//! Checks run before any model loads: option ranges, bounded input files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dera::SamplingOptions;
use dera::dera_logits::ProcessorChain;
use dera::dera_models::ModelConfig;

use crate::args::UsageError;

/// Sampling options out of range (`--top-p 0`, a negative temperature, ...) are usage errors.
pub fn sampling(opts: &SamplingOptions) -> Result<()> {
    ProcessorChain::from_options(opts)
        .map(drop)
        .map_err(|e| UsageError(format!("sampling options: {e}")).into())
}

/// `--max-new-tokens` must leave room for a prompt in every model's context (read from the
/// configs, before loading; unreadable configs are reported by the load itself).
pub fn new_tokens_fit(dirs: &[&PathBuf], new: usize, flag: &str) -> Result<()> {
    for dir in dirs {
        if let Ok(cfg) = ModelConfig::from_dir(dir)
            && new >= cfg.max_position_embeddings
        {
            return Err(UsageError(format!(
                "{flag} {new} leaves no room for a prompt: {} has a context of {} positions (max_position_embeddings)",
                dir.display(),
                cfg.max_position_embeddings
            ))
            .into());
        }
    }
    Ok(())
}

/// The non-blank lines of a JSONL file as JSON values with their line numbers, read line by
/// line within [`dera_io::LineLimits::DEFAULT`] (1 MiB a line, a million lines).
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let lines = dera_io::read_lines(path, dera_io::LineLimits::DEFAULT)?;
    lines
        .into_iter()
        .map(|(n, l)| {
            let v = serde_json::from_str(&l)
                .with_context(|| format!("{}:{n}: invalid JSON", path.display()))?;
            Ok((n, v))
        })
        .collect()
}
