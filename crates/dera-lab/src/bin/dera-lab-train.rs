//! Trains the lab's tiny models: tokenizer, SFT reference, DPO-aligned models.
//!
//! `bash scripts/lab/make_assets.sh` runs `dera-lab-train all`, which regenerates
//! `assets/models/{reference,aligned-length,aligned-question}` and `assets/prompts.jsonl`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Train the DeRa lab's tiny models on the fortunes corpus")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tokenizer, SFT reference model and prompts.
    Sft(dera_lab::cli::SftArgs),
    /// A DPO-aligned model from a reference.
    Dpo(dera_lab::cli::DpoArgs),
    /// Sample the mixture over a lambda grid (same as `dera sweep`).
    Sweep(dera_lab::cli::SweepArgs),
    /// Join sweep shards (same as `dera sweep merge`).
    SweepMerge(dera_lab::cli::SweepMergeArgs),
    /// Pairwise accuracy (same as `dera eval pairwise`).
    Pairwise(dera_lab::cli::PairwiseArgs),
    /// DeRa vs retrained vs weight-merged models, from sweep outputs (the paper's Figure 2).
    Compare(dera_lab::cli::CompareArgs),
    /// The committed models at a few lambdas (same as `dera demo`).
    Demo(dera_lab::cli::DemoArgs),
    /// The whole pipeline: SFT, then one DPO model per reward.
    All {
        #[command(flatten)]
        sft: dera_lab::cli::SftArgs,
        /// KL strength of the committed aligned models.
        #[arg(long, default_value_t = 0.1)]
        beta: f64,
        /// Work directory for DPO intermediates (preference pairs).
        #[arg(long, default_value = "target/dera-lab")]
        work: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // Ctrl-C removes temporaries (the demo's unpacked models, half-written outputs).
    dera_io::install_signal_cleanup();
    match Cli::parse().cmd {
        Cmd::Sft(a) => dera_lab::cli::run_sft(&a),
        Cmd::Dpo(a) => dera_lab::cli::run_dpo(&a),
        Cmd::Sweep(a) => dera_lab::cli::run_sweep(&a),
        Cmd::SweepMerge(a) => dera_lab::cli::run_sweep_merge(&a),
        Cmd::Pairwise(a) => dera_lab::cli::run_pairwise(&a),
        Cmd::Demo(a) => dera_lab::cli::run_demo(&a),
        Cmd::Compare(a) => dera_lab::cli::run_compare(&a),
        Cmd::All { sft, beta, work } => dera_lab::cli::run_all(&sft, beta, &work),
    }
}
