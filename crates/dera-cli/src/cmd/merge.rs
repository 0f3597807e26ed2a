//! `dera merge`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use dera_lora::{Adapter, is_adapter_dir};
use dera_merge::{
    Accumulate, MergeInputs, MergeOptions, OutDtype, Progress, VocabPolicy, parse_size,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::UsageError;

/// Merge checkpoints in weight space, streaming one tensor at a time.
///
/// An aligned DIR may be a PEFT LoRA adapter folder (with adapter_config.json): its model is
/// the reference plus scale * B A, so the merge adds lambda * scale * B A to the weights it
/// adapts.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reference (SFT) checkpoint directory.
    #[arg(long = "ref", value_name = "DIR")]
    reference: PathBuf,
    /// Aligned checkpoint directory or LoRA adapter folder; repeat for several rewards.
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
    /// Output directory for the merged checkpoint (written atomically).
    #[arg(long, value_name = "DIR", required_unless_present = "adapter_out")]
    out: Option<PathBuf>,
    /// Write the lambda-scaled adapter as a PEFT adapter folder (every --aligned must be an
    /// adapter; several are stacked into one).
    #[arg(long, value_name = "DIR")]
    adapter_out: Option<PathBuf>,
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
    let mut inputs = MergeInputs {
        reference: a.reference.clone(),
        aligned: Vec::new(),
        lambdas: Vec::new(),
    };
    let mut adapters: Vec<(Adapter, f64)> = Vec::new();
    for (dir, &lambda) in a.aligned.iter().zip(&a.lambda) {
        if is_adapter_dir(dir) {
            adapters.push((Adapter::open(dir)?, lambda));
        } else {
            inputs.aligned.push(dir.clone());
            inputs.lambdas.push(lambda);
        }
    }
    let adapters: Vec<(&Adapter, f64)> = adapters.iter().map(|(a, l)| (a, *l)).collect();
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
    let mut stdout = std::io::stdout().lock();
    if let Some(dir) = &a.adapter_out {
        write_adapter(a, &adapters, inputs.aligned.first(), dir, &mut stdout)?;
    }
    let Some(out) = &a.out else {
        return Ok(());
    };
    if a.dry_run {
        let plan = dera_merge::plan_with(&inputs, &adapters, out, &options)?;
        writeln!(stdout, "{plan}")?;
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
    let report =
        dera_merge::merge_checkpoints_with(&inputs, &adapters, out, &options, Some(&progress));
    bar.finish_and_clear();
    writeln!(stdout, "{}", report?)?;
    Ok(())
}

/// `--adapter-out`: the adapters' update times lambda as one PEFT adapter folder, checked
/// against the reference's weights.
fn write_adapter(
    a: &Args,
    adapters: &[(&Adapter, f64)],
    full: Option<&PathBuf>,
    dir: &Path,
    stdout: &mut impl Write,
) -> Result<()> {
    if let Some(full) = full {
        return Err(UsageError(format!(
            "--adapter-out writes an adapter, but --aligned {} is a full checkpoint (only adapter folders can be combined into one)",
            full.display()
        ))
        .into());
    }
    let combined = match adapters {
        [(one, lambda)] => one.scaled(*lambda as f32),
        many => {
            let scaled: Vec<(&Adapter, f32)> = many.iter().map(|(a, l)| (*a, *l as f32)).collect();
            Adapter::stack(&scaled)?
        }
    };
    let reference = dera_checkpoint::Checkpoint::open(&a.reference)?;
    combined.check_against(&|name| reference.raw(name).ok().map(|r| r.shape.to_vec()))?;
    if a.dry_run {
        writeln!(
            stdout,
            "adapter into {}: {} modules, rank {}",
            dir.display(),
            combined.modules.len(),
            combined.config.r
        )?;
        return Ok(());
    }
    let mut inputs: Vec<&Path> = vec![a.reference.as_path()];
    inputs.extend(a.aligned.iter().map(PathBuf::as_path));
    combined.write(dir, a.force, &inputs)?;
    writeln!(
        stdout,
        "wrote adapter {} ({} modules, rank {})",
        dir.display(),
        combined.modules.len(),
        combined.config.r
    )?;
    Ok(())
}
