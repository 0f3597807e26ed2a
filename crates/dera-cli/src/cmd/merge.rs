//! `dera merge`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use dera_merge::{
    Accumulate, MergeInputs, MergeOptions, OutDtype, Progress, VocabPolicy, parse_size,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Merge checkpoints in weight space, streaming one tensor at a time.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reference (SFT) checkpoint directory.
    #[arg(long = "ref", value_name = "DIR")]
    reference: PathBuf,
    /// Aligned checkpoint directory; repeat for several rewards.
    #[arg(long, value_name = "DIR", required = true)]
    aligned: Vec<PathBuf>,
    /// One lambda per aligned model, comma-separated.
    #[arg(
        long,
        value_name = "L[,L2,...]",
        value_delimiter = ',',
        allow_negative_numbers = true,
        required = true
    )]
    lambda: Vec<f64>,
    /// Output directory (written atomically).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Output dtype (default: the inputs' dtype).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    dtype: Option<String>,
    /// Accumulate in f64 instead of f32.
    #[arg(long)]
    f64: bool,
    /// Largest output shard, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Replace an existing output directory (only after the merge succeeds).
    #[arg(long)]
    force: bool,
    /// Truncate embedding rows to the smallest vocabulary when they differ.
    #[arg(long)]
    truncate_vocab: bool,
    /// Print the plan (tensors, bytes, estimated peak memory) and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs the command.
pub fn run(a: &Args) -> Result<()> {
    crate::args::lambdas_for(&a.lambda, a.aligned.len())?;
    let inputs = MergeInputs {
        reference: a.reference.clone(),
        aligned: a.aligned.clone(),
        lambdas: a.lambda.clone(),
    };
    let options = MergeOptions {
        dtype: a
            .dtype
            .as_deref()
            .map(str::parse::<OutDtype>)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        accumulate: if a.f64 {
            Accumulate::F64
        } else {
            Accumulate::F32
        },
        max_shard_size: parse_size(&a.max_shard_size)?,
        force: a.force,
        vocab: if a.truncate_vocab {
            VocabPolicy::TruncateToSmallest
        } else {
            VocabPolicy::Strict
        },
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    if a.dry_run {
        writeln!(out, "{}", dera_merge::plan(&inputs, &a.out, &options)?)?;
        return Ok(());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |p: &Progress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(p.name.clone());
    };
    let report = dera_merge::merge_checkpoints(&inputs, &a.out, &options, Some(&progress));
    bar.finish_and_clear();
    writeln!(out, "{}", report?)?;
    Ok(())
}
