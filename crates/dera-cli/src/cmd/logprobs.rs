//! `dera logprobs`.

use std::io::Write;

use anyhow::Result;

use crate::args::{Format, ModelArgs, Presentation, prompt_ids};

/// Next-token log-probabilities after a prompt.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    show: Presentation,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// How many tokens the text format lists.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// Runs the command.
pub fn run(a: &Args) -> Result<()> {
    let mixture = a.models.mixture()?;
    let r = a.models.load()?;
    let ids = prompt_ids(&r, &a.prompt, a.show.chat)?;
    let logprobs = r.next_token_logprobs(&ids, &mixture)?;
    let mut out = std::io::stdout().lock();
    match a.show.format {
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::json!({ "prompt_ids": ids, "logprobs": logprobs })
        )?,
        Format::Text => {
            let tok = r.tokenizer()?;
            let mut order: Vec<usize> = (0..logprobs.len()).collect();
            order.sort_by(|&x, &y| logprobs[y].total_cmp(&logprobs[x]));
            writeln!(
                out,
                "prompt: {} tokens; lambdas {:?}",
                ids.len(),
                mixture.lambdas()
            )?;
            for &i in order.iter().take(a.top) {
                let piece = tok.decode(&[i as u32]).unwrap_or_default();
                writeln!(
                    out,
                    "{:>8} {:>9.5} {:>8.4}%  {:?}",
                    i,
                    logprobs[i],
                    100.0 * f64::from(logprobs[i]).exp(),
                    piece
                )?;
            }
        }
    }
    Ok(())
}
