//! `dera`: decoding-time realignment of language models from the command line.

mod args;
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
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logprobs(a) => cmd::logprobs::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Compare(a) => cmd::compare::run(a),
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<args::UsageError>().is_some() {
                2
            } else {
                1
            })
        }
    }
}
