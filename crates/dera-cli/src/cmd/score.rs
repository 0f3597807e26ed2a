//! `dera score`.

use std::io::Write;

use anyhow::Result;

use crate::args::{Format, ModelArgs, Presentation, prompt_ids};

/// Log-probabilities of a response under the mixture, and KL to the reference.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    show: Presentation,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// The response to score (tokenized without special tokens, appended to the prompt).
    #[arg(long)]
    response: String,
}

/// Runs the command.
pub fn run(a: &Args) -> Result<()> {
    let mixture = a.models.mixture()?;
    let r = a.models.load()?;
    let ids = prompt_ids(&r, &a.prompt, a.show.chat)?;
    let response = r.tokenizer()?.encode_with(&a.response, false)?;
    let s = r.score(&ids, &response, &mixture)?;
    let mut out = std::io::stdout().lock();
    match a.show.format {
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "prompt_ids": ids, "response_ids": response, "lambdas": mixture.lambdas(),
                "token_logprobs": s.token_logprobs, "total_logprob": s.total_logprob,
                "kl_to_reference": s.kl_to_reference, "total_kl": s.total_kl,
            })
        )?,
        Format::Text => {
            let tok = r.tokenizer()?;
            writeln!(
                out,
                "{:>8} {:>10} {:>10}  token",
                "id", "logprob", "KL(mix||ref)"
            )?;
            for ((id, lp), kl) in response
                .iter()
                .zip(&s.token_logprobs)
                .zip(&s.kl_to_reference)
            {
                writeln!(
                    out,
                    "{id:>8} {lp:>10.5} {kl:>10.5}  {:?}",
                    tok.decode(&[*id]).unwrap_or_default()
                )?;
            }
            writeln!(
                out,
                "total log p = {:.5}, total KL = {:.5}",
                s.total_logprob, s.total_kl
            )?;
        }
    }
    Ok(())
}
