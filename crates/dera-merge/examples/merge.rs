//! Merge checkpoints from the command line (used by `bench/merge/run.sh`).
//!
//! ```text
//! cargo run --release -p dera-merge --example merge -- \
//!     --ref BASE --aligned TUNED --lambda 0.3 --out MERGED \
//!     [--aligned DIR --lambda L]... [--dtype f32|bf16|f16] [--accumulate f64] \
//!     [--max-shard-size 5GB] [--force] [--truncate-vocab] [--sync] [--no-hash] [--dry-run] [--quiet]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use dera_merge::{
    Accumulate, MergeInputs, MergeOptions, Progress, VocabPolicy, merge_checkpoints, parse_size,
    plan,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut inputs = MergeInputs {
        reference: PathBuf::new(),
        aligned: Vec::new(),
        lambdas: Vec::new(),
    };
    let mut options = MergeOptions::default();
    let (mut out, mut dry_run, mut quiet) = (None, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--ref" => inputs.reference = value()?.into(),
            "--aligned" => inputs.aligned.push(value()?.into()),
            "--lambda" => inputs.lambdas.push(value()?.parse()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--dtype" => options.dtype = Some(value()?.parse()?),
            "--accumulate" => {
                options.accumulate = match value()?.as_str() {
                    "f32" => Accumulate::F32,
                    "f64" => Accumulate::F64,
                    v => return Err(format!("--accumulate {v}: expected f32 or f64").into()),
                }
            }
            "--max-shard-size" => options.max_shard_size = parse_size(&value()?)?,
            "--force" => options.force = true,
            "--truncate-vocab" => options.vocab = VocabPolicy::TruncateToSmallest,
            "--sync" => options.sync = true,
            "--no-hash" => options.hash_inputs = false,
            "--dry-run" => dry_run = true,
            "--quiet" => quiet = true,
            other => return Err(format!("unknown argument {other:?} (see the file's doc)").into()),
        }
    }
    if inputs.reference.as_os_str().is_empty() {
        return Err("--ref is required".into());
    }
    let out = out.ok_or("--out is required")?;
    if dry_run {
        println!("{}", plan(&inputs, &out, &options)?);
        return Ok(());
    }
    let show = |p: &Progress| {
        eprint!(
            "\r[{}/{}] {:.0}% {:<60.60}",
            p.done,
            p.total,
            100.0 * p.bytes_done as f64 / p.bytes_total.max(1) as f64,
            p.name
        );
        let _ = std::io::stderr().flush();
    };
    let progress: Option<&dyn Fn(&Progress)> = if quiet { None } else { Some(&show) };
    let report = merge_checkpoints(&inputs, &out, &options, progress)?;
    if !quiet {
        eprintln!();
    }
    println!("{report}");
    Ok(())
}
