//! Command-line arguments and entry points. The `dera` binary embeds the `Args` structs as
//! subcommands and calls the matching `run_*` function; `dera-lab-train` does the same for
//! training.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use dera::{LoadOptions, Quantization, Realigner, VocabPolicy, WeightDtype};
use dera_models::Device;

use crate::corpus;
#[cfg(feature = "train")]
use crate::corpus::{Corpus, split_prompt};
#[cfg(feature = "train")]
use crate::dpo::{self, DpoConfig, PairSampling, PreferencePair};
use crate::error::LabError;
#[cfg(feature = "train")]
use crate::export::{self, TinyConfig};
#[cfg(feature = "train")]
use crate::params::Params;
use crate::reward::Reward;
#[cfg(feature = "train")]
use crate::tokenizer;
#[cfg(feature = "train")]
use crate::train::{self, SftConfig};

#[cfg(feature = "train")]
/// `dera-lab-train sft`: tokenizer + SFT reference model.
#[derive(Debug, Clone, Args)]
pub struct SftArgs {
    /// Directory of fortune files (Debian's `fortunes` package).
    #[arg(long, default_value = corpus::DEFAULT_FORTUNES_DIR)]
    pub fortunes: PathBuf,
    /// Output model directory.
    #[arg(long, default_value = "assets/models/reference")]
    pub out: PathBuf,
    /// Where to write held-out evaluation prompts (JSONL).
    #[arg(long, default_value = "assets/prompts.jsonl")]
    pub prompts_out: PathBuf,
    /// Number of held-out fortunes (prompts are cut from them).
    #[arg(long, default_value_t = 500)]
    pub eval_size: usize,
    /// Tokenizer vocabulary size.
    #[arg(long, default_value_t = 1536)]
    pub vocab: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Residual width.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Passes over the corpus (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    pub epochs: f64,
    /// Padded tokens per batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Longest training sequence in tokens (longer fortunes are dropped).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Seed of the corpus split, initialisation and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[cfg(feature = "train")]
/// `dera-lab-train dpo`: a DPO-aligned model from a reference.
#[derive(Debug, Clone, Args)]
pub struct DpoArgs {
    /// The reference (SFT) model, also the DPO reference.
    #[arg(long = "ref", default_value = "assets/models/reference")]
    pub reference: PathBuf,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Reward ranking the pairs (`length:MIN-MAX` in words, or `question`).
    #[arg(long, default_value = crate::reward::DEFAULT_LENGTH_SPEC)]
    pub reward: String,
    /// KL strength beta.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Preference pairs (JSONL); reused when it exists, else sampled and written there.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Directory of fortune files, for training prompts.
    #[arg(long, default_value = corpus::DEFAULT_FORTUNES_DIR)]
    pub fortunes: PathBuf,
    /// Held-out fortunes (must match the SFT run).
    #[arg(long, default_value_t = 500)]
    pub eval_size: usize,
    /// Prompts to sample pairs for.
    #[arg(long, default_value_t = 1500)]
    pub num_prompts: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = 6)]
    pub samples_per_prompt: usize,
    /// Train on the Bradley-Terry probability of each pair under the reward instead of hard
    /// labels, so that beta sets the alignment strength (see `dpo::bradley_terry_labels`).
    #[arg(long)]
    pub soft_labels: bool,
    /// Keep every pair instead of balancing the ways rejected responses fail the reward
    /// (too short / too long).
    #[arg(long)]
    pub unbalanced: bool,
    /// Passes over the pairs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Pairs per step.
    #[arg(long, default_value_t = 32)]
    pub batch_pairs: usize,
    /// Seed (must match the SFT run for the corpus split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[cfg(feature = "train")]
fn tiny(args: &SftArgs) -> TinyConfig {
    TinyConfig {
        vocab_size: args.vocab,
        hidden_size: args.hidden,
        num_layers: args.layers,
        ..TinyConfig::default()
    }
}

#[cfg(feature = "train")]
/// Trains the tokenizer and the SFT model, writes the model and the evaluation prompts.
pub fn run_sft(args: &SftArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let corpus = Corpus::load(&args.fortunes, args.eval_size, args.seed)?;
    println!(
        "corpus: {} training fortunes ({} bytes), {} held out",
        corpus.train.len(),
        corpus.train_bytes(),
        corpus.eval.len()
    );
    tokenizer::train(&corpus.train, args.vocab, &args.out)?;
    tokenizer::write_tokenizer_config(&args.out)?;
    let tok = dera_models::Tokenizer::from_file(&args.out.join("tokenizer.json"))?;
    let mut seqs = Vec::with_capacity(corpus.train.len());
    for f in &corpus.train {
        let mut ids = tok.encode(f)?;
        ids.push(tokenizer::EOT_ID);
        if ids.len() <= args.max_tokens {
            seqs.push(ids);
        }
    }
    let n_tok: usize = seqs.iter().map(Vec::len).sum();
    println!(
        "tokenizer: {} entries; {} sequences, {n_tok} tokens ({:.2} bytes/token)",
        tok.vocab_size(),
        seqs.len(),
        corpus.train_bytes() as f64 / n_tok as f64
    );
    let tc = tiny(args);
    let cfg = tc.model_config()?;
    let mut params = Params::init(&cfg, args.seed, &Device::flex());
    println!("model: {} parameters", params.count());
    let sc = SftConfig {
        epochs: args.epochs,
        batch_tokens: args.batch_tokens,
        lr: args.lr,
        seed: args.seed,
        ..SftConfig::default()
    };
    let mut avg = 0.0;
    train::sft(&cfg, &mut params, &seqs, &sc, |step, total, loss, secs| {
        avg = if step == 0 {
            loss
        } else {
            0.95 * avg + 0.05 * loss
        };
        if step % 25 == 0 || step + 1 == total {
            println!("sft step {step:>5}/{total} loss {loss:.3} (avg {avg:.3}) {secs:>6.0}s");
        }
    })?;
    export::export(&args.out, &tc.to_json(), &params.to_host()?, &args.out)?;
    let prompts: Vec<String> = corpus.eval.iter().map(|f| split_prompt(f).0).collect();
    if let Some(dir) = args.prompts_out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    corpus::write_prompts(&args.prompts_out, &prompts)?;
    println!(
        "wrote {} and {} in {:.0}s",
        args.out.display(),
        args.prompts_out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "train")]
/// Samples (or reuses) preference pairs and trains a DPO model from the reference.
pub fn run_dpo(args: &DpoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let reward = Reward::parse(&args.reward)?;
    let pairs: Vec<PreferencePair> = if args.pairs.is_file() {
        corpus::read_jsonl(&args.pairs)?
    } else {
        let corpus = Corpus::load(&args.fortunes, args.eval_size, args.seed)?;
        let mut prompts: Vec<String> = corpus.train.iter().map(|f| split_prompt(f).0).collect();
        prompts.truncate(args.num_prompts);
        let engine = Realigner::load(&args.reference, &[], &Device::flex(), VocabPolicy::Strict)
            .with_context(|| format!("loading {}", args.reference.display()))?;
        let ps = PairSampling {
            samples_per_prompt: args.samples_per_prompt,
            balance_failures: !args.unbalanced,
            seed: args.seed.wrapping_add(17),
            ..PairSampling::default()
        };
        let pairs = dpo::sample_pairs(&engine, &prompts, &reward, &ps, |done, total| {
            if done % 240 == 0 {
                println!(
                    "sampling: {done}/{total} prompts ({:.0}s)",
                    t0.elapsed().as_secs_f64()
                );
            }
        })?;
        if let Some(dir) = args.pairs.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        dpo::write_pairs(&args.pairs, &pairs)?;
        pairs
    };
    println!(
        "{} preference pairs for {} ({:.0}s)",
        pairs.len(),
        reward.name(),
        t0.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        !pairs.is_empty(),
        "no preference pairs: the reward never separates samples"
    );
    let cfg = dera_models::ModelConfig::from_dir(&args.reference)?;
    let dc = DpoConfig {
        beta: args.beta,
        batch_pairs: args.batch_pairs,
        epochs: args.epochs,
        lr: args.lr,
        seed: args.seed,
        labels: args
            .soft_labels
            .then(|| dpo::bradley_terry_labels(&pairs, &reward)),
    };
    let reference = dpo::frozen_logprobs(&cfg, &args.reference, &pairs, dc.batch_pairs)?;
    let mut params = Params::from_checkpoint(&args.reference, &cfg, &Device::flex())?;
    let mut acc = 0.0;
    dpo::dpo(&cfg, &mut params, &pairs, &reference, &dc, |s| {
        acc = if s.step == 0 {
            s.accuracy
        } else {
            0.9 * acc + 0.1 * s.accuracy
        };
        if s.step % 10 == 0 || s.step + 1 == s.total {
            println!(
                "dpo step {:>4}/{} loss {:.3} acc {:.2} (avg {acc:.2}) {:>5.0}s",
                s.step, s.total, s.loss, s.accuracy, s.elapsed
            );
        }
    })?;
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(args.reference.join("config.json"))
            .context("reading the reference config")?,
    )?;
    export::export(&args.out, &cfg_json, &params.to_host()?, &args.reference)?;
    println!(
        "wrote {} in {:.0}s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "train")]
/// The whole pipeline: SFT, then DPO for the length and the question reward at `beta`.
pub fn run_all(sft: &SftArgs, beta: f64, work: &Path) -> anyhow::Result<()> {
    run_sft(sft)?;
    let models = sft.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    // Overlong samples (about 5%) bound the balanced length pairs and the question mark is
    // rare too (about 10% of SFT samples), so both get many prompts.
    for (name, reward, prompts, samples) in [
        (
            "aligned-length",
            crate::reward::DEFAULT_LENGTH_SPEC,
            4000,
            8,
        ),
        ("aligned-question", "question", 3000, 6),
    ] {
        let tag = name.trim_start_matches("aligned-");
        run_dpo(&DpoArgs {
            reference: sft.out.clone(),
            out: models.join(name),
            reward: reward.into(),
            beta,
            pairs: work.join(format!("pairs-{tag}.jsonl")),
            fortunes: sft.fortunes.clone(),
            eval_size: sft.eval_size,
            num_prompts: prompts,
            samples_per_prompt: samples,
            unbalanced: false,
            soft_labels: false,
            epochs: 2,
            lr: 5e-4,
            batch_pairs: 32,
            seed: sft.seed,
        })?;
    }
    Ok(())
}

fn device() -> Device {
    Device::flex()
}

/// `--dtype` and `--quantize`: how weight matrices are kept in memory (every command that loads
/// models takes them; `dera-cli` uses the same flags).
#[derive(Debug, Clone, Args)]
pub struct PrecisionArgs {
    /// Weight matrices in memory: auto = as stored in the checkpoint (f32, bf16 or f16), or
    /// converted to f32, bf16 or f16. Computation accumulates in f32 either way. Models whose
    /// matrices together stay in cache (at most 8M parameters) also keep them in panels of 16
    /// rows, for faster batched products.
    #[arg(long, default_value = "auto", value_parser = parse_dtype)]
    pub dtype: WeightDtype,
    /// Quantize weight matrices at load to llama.cpp's q8_0, q4_0, q4_1, q5_0 or q5_1 blocks (32
    /// weights, f16 scale; q4_1 and q5_1 also a minimum) or q4_k, q5_k or q6_k super-blocks (256
    /// weights).
    #[arg(long, value_parser = parse_quantize)]
    pub quantize: Option<Quantization>,
}

impl PrecisionArgs {
    /// The load options the flags describe.
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.dtype,
            quantize: self.quantize,
            panels: false,
        }
    }
}

fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    s.parse::<WeightDtype>().map_err(|e| e.to_string())
}

fn parse_quantize(s: &str) -> Result<Quantization, String> {
    s.parse::<Quantization>().map_err(|e| e.to_string())
}

fn load_engine(
    reference: &Path,
    aligned: &[PathBuf],
    options: &LoadOptions,
) -> anyhow::Result<Realigner> {
    Realigner::load_with(reference, aligned, &device(), VocabPolicy::Strict, options).with_context(
        || {
            format!(
                "loading reference {} and {} aligned model(s)",
                reference.display(),
                aligned.len()
            )
        },
    )
}

/// Applies the rule for outputs to every file output before any work: none may be an input
/// (or lie inside an input directory), two outputs may not be the same file, and an existing
/// one needs `force`.
fn check_outputs(outputs: &[&Path], inputs: &[&Path], force: bool) -> anyhow::Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        dera_io::check_output(out, dera_io::OutputKind::File, force, inputs)?;
        for other in &outputs[..i] {
            if dera_io::resolve(out)? == dera_io::resolve(other)? {
                return Err(LabError::spec(
                    "output",
                    &out.display().to_string(),
                    format!("the same file as {}", other.display()),
                )
                .into());
            }
        }
    }
    Ok(())
}

fn bar(len: u64, msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {bar:40} {pos}/{len} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(msg.to_string());
    pb
}

/// `dera sweep`: sample the mixture over a lambda grid.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// Reference (SFT) model directory.
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Aligned model directory (repeat for K > 1).
    #[arg(long, required = true)]
    pub aligned: Vec<PathBuf>,
    /// Lambda grid: `start:stop:step` (inclusive) or `a,b,c`; one axis per aligned model
    /// separated by `;`, or one axis for all (the grid is their product).
    #[arg(long, default_value = "0:2:0.2")]
    pub lambdas: String,
    /// Prompts, JSONL objects with a "prompt" field.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Use only the first N prompts.
    #[arg(long)]
    pub max_prompts: Option<usize>,
    /// Samples per prompt and lambda.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Rewards, comma-separated: `length:MIN-MAX` (words) and/or `question`.
    #[arg(long, default_value = crate::reward::DEFAULT_LENGTH_SPEC)]
    pub reward: String,
    /// Output JSONL (one line per response, then one summary line per lambda vector).
    #[arg(long)]
    pub out: PathBuf,
    /// Also plot reward and KL against lambda (`.svg` or `.png`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Replace existing `--out` / `--plot` files (never an input).
    #[arg(long)]
    pub force: bool,
    /// Run part `i` of `n` (prompts `p` with `p % n == i`).
    #[arg(long)]
    pub shard: Option<String>,
    /// Base sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most new tokens per response.
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Skip the KL scoring pass.
    #[arg(long)]
    pub no_kl: bool,
    /// Weight matrices in memory: auto = as stored in the checkpoint (f32, bf16 or f16), or
    /// converted to f32, bf16 or f16. Computation accumulates in f32 either way.
    // Not a flattened `PrecisionArgs`: `dera sweep` flattens `Option<SweepArgs>`, and clap
    // leaves the group of a struct with a nested flatten empty, so the option would always be
    // `None` (every `dera sweep` failed with "needs --ref, ...").
    #[arg(long, default_value = "auto", value_parser = parse_dtype)]
    pub dtype: WeightDtype,
    /// Quantize weight matrices at load to llama.cpp's q8_0, q4_0, q4_1, q5_0 or q5_1 blocks (32
    /// weights, f16 scale; q4_1 and q5_1 also a minimum) or q4_k, q5_k or q6_k super-blocks (256
    /// weights).
    #[arg(long, value_parser = parse_quantize)]
    pub quantize: Option<Quantization>,
}

impl SweepArgs {
    /// The load options `--dtype` and `--quantize` describe.
    pub fn load_options(&self) -> LoadOptions {
        PrecisionArgs {
            dtype: self.dtype,
            quantize: self.quantize,
        }
        .options()
    }
}

/// `dera sweep merge`: join shard outputs.
#[derive(Debug, Clone, Args)]
pub struct SweepMergeArgs {
    /// Shard outputs of `dera sweep --shard`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Merged output JSONL.
    #[arg(long)]
    pub out: PathBuf,
    /// Also plot the merged sweep (`.svg` or `.png`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Replace existing `--out` / `--plot` files (never an input).
    #[arg(long)]
    pub force: bool,
}

fn print_summaries(summaries: &[crate::sweep::LambdaSummary]) {
    let names: Vec<String> = summaries
        .first()
        .map(|s| s.mean_reward.keys().cloned().collect())
        .unwrap_or_default();
    print!(
        "{:<14} {:>7} {:>8} {:>8} {:>12}",
        "lambdas", "samples", "words", "tokens", "KL"
    );
    for n in &names {
        print!(" {n:>14}");
    }
    println!();
    for s in summaries {
        let l = s
            .lambdas
            .iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(",");
        let kl = if s.mean_kl.is_finite() {
            format!("{:>6.2}±{:<5.2}", s.mean_kl, s.kl_stderr)
        } else {
            format!("{:>12}", "-")
        };
        print!(
            "{l:<14} {:>7} {:>8.2} {:>8.2} {kl}",
            s.samples, s.mean_words, s.mean_tokens
        );
        for n in &names {
            print!(
                " {:>14.3}",
                s.mean_reward.get(n).copied().unwrap_or(f64::NAN)
            );
        }
        println!();
    }
}

/// Runs a sweep, writes the JSONL (and plot) and prints the per-lambda table.
pub fn run_sweep(args: &SweepArgs) -> anyhow::Result<()> {
    let grid = crate::sweep::parse_grid(&args.lambdas, args.aligned.len())?;
    let rewards = Reward::parse_list(&args.reward)?;
    let shard = match &args.shard {
        Some(s) => crate::sweep::Shard::parse(s)?,
        None => crate::sweep::Shard::WHOLE,
    };
    if let Some(p) = &args.plot {
        crate::plot::check_path(p)?; // fail early on a bad extension
    }
    crate::sweep::check_size(grid.len(), args.samples)?;
    temperature_ok(args.temperature)?;
    new_tokens_fit(
        std::iter::once(&args.reference).chain(&args.aligned),
        args.max_new_tokens,
    )?;
    let inputs: Vec<&Path> = std::iter::once(args.reference.as_path())
        .chain(args.aligned.iter().map(PathBuf::as_path))
        .chain([args.prompts.as_path()])
        .collect();
    let outputs: Vec<&Path> = std::iter::once(args.out.as_path())
        .chain(args.plot.as_deref())
        .collect();
    check_outputs(&outputs, &inputs, args.force)?;
    let mut prompts = corpus::read_prompts(&args.prompts)?;
    if let Some(n) = args.max_prompts {
        prompts.truncate(n);
    }
    anyhow::ensure!(
        !prompts.is_empty(),
        "{}: no prompts",
        args.prompts.display()
    );
    let engine = load_engine(&args.reference, &args.aligned, &args.load_options())?;
    let sc = crate::sweep::SweepConfig {
        grid,
        samples: args.samples,
        rewards,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        seed: args.seed,
        shard,
        kl: !args.no_kl,
    };
    let total = shard.indices(prompts.len()).len() * sc.grid.len() * sc.samples;
    let pb = bar(total as u64, "sweep");
    let t0 = Instant::now();
    let records = crate::sweep::run(&engine, &prompts, &sc, || pb.inc(1))?;
    pb.finish_and_clear();
    crate::sweep::write(&args.out, &records, args.force)?;
    let summaries = crate::sweep::summarize(&records);
    if let Some(p) = &args.plot {
        crate::plot::write(p, &crate::plot::sweep_charts(&summaries), args.force)?;
    }
    print_summaries(&summaries);
    println!(
        "{} responses in {:.1}s -> {}",
        records.len(),
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Merges shard outputs into one sweep file (and plot) and prints the table.
pub fn run_sweep_merge(args: &SweepMergeArgs) -> anyhow::Result<()> {
    if let Some(p) = &args.plot {
        crate::plot::check_path(p)?;
    }
    let inputs: Vec<&Path> = args.files.iter().map(PathBuf::as_path).collect();
    let outputs: Vec<&Path> = std::iter::once(args.out.as_path())
        .chain(args.plot.as_deref())
        .collect();
    check_outputs(&outputs, &inputs, args.force)?;
    let parts = args
        .files
        .iter()
        .map(|f| crate::sweep::read(f))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = crate::sweep::merge(&parts)?;
    crate::sweep::write(&args.out, &merged, args.force)?;
    let summaries = crate::sweep::summarize(&merged);
    if let Some(p) = &args.plot {
        crate::plot::write(p, &crate::plot::sweep_charts(&summaries), args.force)?;
    }
    print_summaries(&summaries);
    println!("{} responses -> {}", merged.len(), args.out.display());
    Ok(())
}

/// `dera eval pairwise`: the paper's pairwise accuracy over a lambda grid.
#[derive(Debug, Clone, Args)]
pub struct PairwiseArgs {
    /// Reference (SFT) model directory.
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Aligned model directory (repeat for K > 1).
    #[arg(long, required = true)]
    pub aligned: Vec<PathBuf>,
    /// Lambda grid (as for `dera sweep`).
    #[arg(long, default_value = "0:2:0.25")]
    pub lambdas: String,
    /// Preference triples, JSONL objects `{prompt, chosen, rejected}`.
    #[arg(long)]
    pub prefs: PathBuf,
    /// Use only the first N triples.
    #[arg(long)]
    pub max_triples: Option<usize>,
    /// Also write the accuracies as JSONL.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing `--out` file (never an input).
    #[arg(long)]
    pub force: bool,
    /// How weight matrices are kept in memory.
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

/// Prints pairwise accuracy per lambda vector.
pub fn run_pairwise(args: &PairwiseArgs) -> anyhow::Result<()> {
    let grid = crate::sweep::parse_grid(&args.lambdas, args.aligned.len())?;
    if let Some(out) = &args.out {
        let inputs: Vec<&Path> = std::iter::once(args.reference.as_path())
            .chain(args.aligned.iter().map(PathBuf::as_path))
            .chain([args.prefs.as_path()])
            .collect();
        check_outputs(&[out], &inputs, args.force)?;
    }
    let mut triples = crate::pairwise::read_triples(&args.prefs)?;
    if let Some(n) = args.max_triples {
        triples.truncate(n);
    }
    anyhow::ensure!(!triples.is_empty(), "{}: no triples", args.prefs.display());
    let engine = load_engine(&args.reference, &args.aligned, &args.precision.options())?;
    let pb = bar(triples.len() as u64, "pairwise");
    let acc = crate::pairwise::evaluate(&engine, &triples, &grid, || pb.inc(1))?;
    pb.finish_and_clear();
    println!(
        "{:<14} {:>9} {:>12} {:>8}",
        "lambdas", "accuracy", "mean margin", "triples"
    );
    let mut lines = String::new();
    for a in &acc {
        let l = a
            .lambdas
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{l:<14} {:>9.3} {:>12.3} {:>8}",
            a.accuracy, a.mean_margin, a.triples
        );
        lines.push_str(&serde_json::to_string(a)?);
        lines.push('\n');
    }
    if let Some(out) = &args.out {
        dera_io::write_file(out, lines.as_bytes(), args.force)?;
    }
    Ok(())
}

/// `dera demo`: the embedded tiny models at a few lambdas.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Directory holding `reference/`, `aligned-length/` and `aligned-question/` (default: the
    /// models embedded in the binary, unpacked to a temporary directory removed at the end).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Which aligned model: `length` or `question`.
    #[arg(long, default_value = "length")]
    pub model: String,
    /// Samples per prompt and lambda for the table.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The prompts the demo uses.
pub const DEMO_PROMPTS: [&str; 4] = [
    "A fool and",
    "The best way",
    "Never trust a",
    "When in doubt,",
];

/// Prints generations at lambda 0, 0.5, 1, 2 and a table of length, reward and KL.
pub fn run_demo(args: &DemoArgs) -> anyhow::Result<()> {
    let (name, reward) = match args.model.as_str() {
        "length" => ("aligned-length", Reward::default_length()),
        "question" => ("aligned-question", Reward::Question),
        other => anyhow::bail!("unknown demo model {other:?}: use `length` or `question`"),
    };
    // The embedded models live in a temporary directory while `unpacked` lives (dera-io
    // removes it on return, on an error and on Ctrl-C).
    let unpacked;
    let (assets, shown): (PathBuf, fn(&Path, &str) -> String) = match &args.assets {
        Some(dir) => (dir.clone(), |dir, model| {
            dir.join(model).display().to_string()
        }),
        None => {
            unpacked = dera_assets::unpack().context("unpacking the embedded demo models")?;
            (unpacked.models(), |_, model| format!("{model} (embedded)"))
        }
    };
    let engine = load_engine(
        &assets.join("reference"),
        &[assets.join(name)],
        &LoadOptions::default(),
    )?;
    println!(
        "reference: {}\naligned:   {} (DPO, beta = 0.1, reward {})\n",
        shown(&assets, "reference"),
        shown(&assets, name),
        reward.name()
    );
    let grid: Vec<Vec<f64>> = [0.0, 0.5, 1.0, 2.0].iter().map(|&l| vec![l]).collect();
    let prompts: Vec<String> = DEMO_PROMPTS.iter().map(|s| s.to_string()).collect();
    let sc = crate::sweep::SweepConfig {
        grid,
        samples: args.samples,
        rewards: vec![reward],
        max_new_tokens: 96,
        temperature: 1.0,
        seed: args.seed,
        shard: crate::sweep::Shard::WHOLE,
        kl: true,
    };
    let records = crate::sweep::run(&engine, &prompts, &sc, || {})?;
    #[allow(clippy::needless_range_loop)]
    for p in 0..prompts.len().min(2) {
        println!("prompt: {:?}", prompts[p]);
        for l in &sc.grid {
            if let Some(r) = records
                .iter()
                .find(|r| r.prompt_index == p && r.lambdas == *l && r.sample == 0)
            {
                println!(
                    "  lambda {:<4} [{:>2} words, reward {:>4}] {}{}",
                    l[0],
                    r.words,
                    r.rewards.values().next().copied().unwrap_or(f64::NAN),
                    prompts[p],
                    r.response
                );
            }
        }
        println!();
    }
    println!(
        "{} prompts x {} samples per lambda:",
        prompts.len(),
        args.samples
    );
    print_summaries(&crate::sweep::summarize(&records));
    Ok(())
}

/// `dera-lab-train compare`: DeRa against retrained and weight-merged models (Figure 2).
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// DeRa sweep output (one aligned model, a lambda grid).
    #[arg(long)]
    pub dera: PathBuf,
    /// A comparison model's sweep at lambda 1, as `LABEL@LAMBDA=FILE` (repeat), e.g.
    /// `retrained@2=sweep-beta0.05.jsonl` or `merged@2=sweep-merged2.jsonl`.
    #[arg(long = "point", required = true)]
    pub points: Vec<String>,
    /// The reward to compare (a name in the sweeps' `rewards`).
    #[arg(long, default_value = crate::reward::DEFAULT_LENGTH_SPEC)]
    pub reward: String,
    /// Figure (`.svg` or `.png`): reward, KL and length against lambda, then length
    /// distributions.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the Markdown table here.
    #[arg(long)]
    pub table: Option<PathBuf>,
    /// Replace existing `--plot` / `--table` files (never an input).
    #[arg(long)]
    pub force: bool,
}

/// Builds the comparison, prints its Markdown table and writes the figure.
pub fn run_compare(args: &CompareArgs) -> anyhow::Result<()> {
    use crate::compare::{Comparison, PointSpec};
    if let Some(p) = &args.plot {
        crate::plot::check_path(p)?; // fail early on a bad extension
    }
    let specs = args
        .points
        .iter()
        .map(|s| PointSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<&Path> = std::iter::once(args.dera.as_path())
        .chain(specs.iter().map(|s| s.file.as_path()))
        .collect();
    let outputs: Vec<&Path> = args
        .plot
        .iter()
        .chain(&args.table)
        .map(PathBuf::as_path)
        .collect();
    check_outputs(&outputs, &inputs, args.force)?;
    let dera = crate::sweep::read(&args.dera)?;
    let points = args
        .points
        .iter()
        .map(|s| {
            let spec = PointSpec::parse(s)?;
            let recs = crate::sweep::read(&spec.file)?;
            Ok((spec, recs))
        })
        .collect::<Result<Vec<_>, crate::LabError>>()?;
    let c = Comparison::new(&dera, &points)?;
    let table = c.markdown(&args.reward);
    print!("{table}");
    if let Some(t) = &args.table {
        dera_io::write_file(t, table.as_bytes(), args.force)?;
    }
    if let Some(p) = &args.plot {
        crate::plot::write(p, &c.charts(&args.reward), args.force)?;
        println!("figure -> {}", p.display());
    }
    Ok(())
}

/// A sampling temperature must be positive and finite (checked before any model loads).
fn temperature_ok(t: f32) -> anyhow::Result<()> {
    if t > 0.0 && t.is_finite() {
        Ok(())
    } else {
        Err(LabError::spec("temperature", &t.to_string(), "must be a positive number").into())
    }
}

/// `--max-new-tokens` must leave room for a prompt in every model's context (read from the
/// configs before loading; an unreadable config is reported by the load itself).
fn new_tokens_fit<'a>(
    dirs: impl IntoIterator<Item = &'a PathBuf>,
    new: usize,
) -> anyhow::Result<()> {
    for dir in dirs {
        if let Ok(cfg) = dera_models::ModelConfig::from_dir(dir)
            && new >= cfg.max_position_embeddings
        {
            return Err(LabError::spec(
                "--max-new-tokens",
                &new.to_string(),
                format!(
                    "leaves no room for a prompt: {} has a context of {} positions",
                    dir.display(),
                    cfg.max_position_embeddings
                ),
            )
            .into());
        }
    }
    Ok(())
}
