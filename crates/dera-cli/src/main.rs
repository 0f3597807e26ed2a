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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logprobs(a) => cmd::logprobs::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Compare(a) => cmd::compare::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<args::UsageError>().is_some() { 2 } else { 1 })
        }
    }
}
