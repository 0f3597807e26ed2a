//! Arguments shared by several commands.

use std::path::PathBuf;

use anyhow::{Context, Result};
use dera::{DeviceKind, Mixture, Realigner, VocabPolicy};

/// A bad combination of command-line arguments (exit code 2, like clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// JSON.
    Json,
}

/// `--chat` and `--format`, shared by the commands that print one result per prompt.
#[derive(Debug, Clone, clap::Args)]
pub struct Presentation {
    /// Render prompts with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// The models to mix and their weights.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Reference (SFT) checkpoint directory in Hugging Face layout.
    #[arg(long = "ref", value_name = "DIR")]
    pub reference: PathBuf,
    /// Aligned checkpoint directory, or a PEFT LoRA adapter folder applied to the reference's
    /// weights; repeat for several rewards.
    #[arg(long, value_name = "DIR")]
    pub aligned: Vec<PathBuf>,
    /// One lambda per aligned model, comma-separated, or one value for all of them (0 =
    /// reference, 1 = aligned, >1 extrapolates).
    #[arg(
        long,
        value_name = "L[,L2,...]",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub lambda: Vec<f64>,
    /// Mix over the reference tokenizer's vocabulary when logit widths differ (padded embeddings).
    #[arg(long)]
    pub truncate_vocab: bool,
    /// Backend.
    #[arg(long, default_value = "flex", value_parser = parse_device)]
    pub device: DeviceKind,
    /// How weight matrices are kept in memory.
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

pub use dera_lab::cli::PrecisionArgs;

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse::<DeviceKind>().map_err(|e| e.to_string())
}

impl ModelArgs {
    /// The mixture the flags describe.
    pub fn mixture(&self) -> Result<Mixture> {
        lambdas_for(&self.lambda, self.aligned.len())
    }

    /// Loads the models.
    pub fn load(&self) -> Result<Realigner> {
        let device = self.device.device()?;
        let policy = if self.truncate_vocab {
            VocabPolicy::TruncateToTokenizer
        } else {
            VocabPolicy::Strict
        };
        Realigner::load_with(
            &self.reference,
            &self.aligned,
            &device,
            policy,
            &self.precision.options(),
        )
        .context("loading models")
    }
}

/// Checks `--lambda` against `--aligned` and builds the mixture: one value per aligned model,
/// or one value for all of them; problems are usage errors.
pub fn lambdas_for(lambda: &[f64], aligned: usize) -> Result<Mixture> {
    let mixture = match lambda {
        [one] if aligned > 1 => Mixture::uniform(*one, aligned),
        _ if lambda.len() == aligned => Mixture::new(lambda.to_vec()),
        _ => {
            return Err(UsageError(format!(
                "{} --lambda value(s) for {aligned} --aligned model(s): give one lambda per aligned model, in order, or one for all",
                lambda.len()
            ))
            .into());
        }
    };
    mixture.map_err(|e| UsageError(format!("--lambda: {e}")).into())
}

/// Prompt text, optionally through the chat template.
pub fn prompt_ids(r: &Realigner, text: &str, chat: bool) -> Result<Vec<u32>> {
    let tok = r.tokenizer()?;
    if chat {
        let rendered = r.chat_template()?.render_user(text)?;
        // The template writes its own special tokens, as transformers' apply_chat_template does.
        Ok(tok.encode_with(&rendered, false)?)
    } else {
        Ok(tok.encode(text)?)
    }
}
