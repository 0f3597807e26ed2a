//! `dera`: decoding-time realignment of language models from the command line.

mod args;
mod checks;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Decoding-time realignment (DeRa): sample from softmax((1 - sum l_i) h_ref + sum l_i h_i).
#[derive(Debug, Parser)]
#[command(
    name = "dera",
    version,
    about = "Decoding-time realignment (DeRa): sample from softmax((1 - sum l_i) h_ref + sum l_i h_i)",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Next-token log-probabilities after a prompt, under one model or a mixture.
    Logprobs(cmd::logprobs::Args),
    /// Generate text from a mixture of a reference and aligned models.
    Generate(cmd::generate::Args),
    /// Per-token log-probabilities and KL to the reference of a given response.
    Score(cmd::score::Args),
    /// Merge checkpoints in weight space: theta = (1 - sum l_i) theta_ref + sum l_i theta_i.
    Merge(cmd::merge::Args),
    /// Compare logit mixing with weight merging along the logit-mix trajectory.
    Compare(cmd::compare::Args),
    /// Check a checkpoint: config sanity, tensor shapes, every value finite, tokenizer.
    Check(cmd::check::Args),
    /// Serve the mixture over an OpenAI-compatible HTTP API (per-request lambda, continuous batching).
    Serve(cmd::serve::Args),
    /// DeRa on the embedded tiny models: generations and a table per lambda.
    Demo(dera_lab::cli::DemoArgs),
    /// Sample the mixture over a lambda grid: rewards, lengths, KL; JSONL and plots.
    Sweep(SweepCommand),
    /// Evaluations of the mixture.
    #[command(subcommand)]
    Eval(EvalCommand),
}

/// `dera sweep [...]` or `dera sweep merge FILES --out`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SweepCommand {
    #[command(subcommand)]
    merge: Option<SweepSub>,
    #[command(flatten)]
    args: Option<dera_lab::cli::SweepArgs>,
}

#[derive(Debug, Subcommand)]
enum SweepSub {
    /// Join the outputs of `dera sweep --shard i/n` runs.
    Merge(dera_lab::cli::SweepMergeArgs),
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// The paper's pairwise accuracy (eq. 14) of the mixture over a lambda grid.
    Pairwise(dera_lab::cli::PairwiseArgs),
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    // Ctrl-C, SIGTERM and SIGHUP remove the temporaries of a merge or sweep before exiting;
    // `dera serve` writes no files and handles them itself (finish in-flight requests, exit 0).
    if !matches!(cli.command, Command::Serve(_)) {
        dera_io::install_signal_cleanup();
    }
    let result = match &cli.command {
        Command::Logprobs(a) => cmd::logprobs::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Demo(a) => dera_lab::cli::run_demo(a),
        Command::Sweep(SweepCommand {
            merge: Some(SweepSub::Merge(a)),
            ..
        }) => dera_lab::cli::run_sweep_merge(a),
        Command::Sweep(SweepCommand { args: Some(a), .. }) => dera_lab::cli::run_sweep(a),
        Command::Sweep(_) => Err(args::UsageError(
            "dera sweep needs --ref, --aligned, --prompts and --out".into(),
        )
        .into()),
        Command::Eval(EvalCommand::Pairwise(a)) => dera_lab::cli::run_pairwise(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if is_usage(&e) { 2 } else { 1 })
        }
    }
}

/// Usage errors (exit 2): bad flags and combinations, and requests that cannot fit the model.
fn is_usage(e: &anyhow::Error) -> bool {
    e.downcast_ref::<args::UsageError>().is_some()
        || matches!(
            e.downcast_ref::<dera::DeraError>(),
            Some(dera::DeraError::Context { .. })
        )
        || matches!(
            e.downcast_ref::<dera_lab::LabError>(),
            Some(dera_lab::LabError::Spec { .. })
        )
}

/// Whether the error is a write to a closed pipe (`dera ... | head -1`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout is a closed pipe; like other Unix tools, dera then stops
/// quietly with exit status 0 instead (after removing any temporaries).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            dera_io::remove_registered();
            std::process::exit(0);
        }
        default(info);
    }));
}
