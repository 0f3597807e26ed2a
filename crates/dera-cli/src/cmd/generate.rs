//! `dera generate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dera::{Decoding, GenerateOptions, Mixture, Request, SamplingOptions};

use crate::args::{Format, ModelArgs, prompt_ids};

/// Generate text from the mixture.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    /// A single prompt.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// JSONL file, one object per line: {"prompt": "...", "lambda": [optional per-prompt lambdas]}.
    #[arg(long, value_name = "FILE.jsonl")]
    prompts: Option<PathBuf>,
    /// Render prompts with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens below this fraction of the top probability.
    #[arg(long)]
    min_p: Option<f32>,
    /// transformers' repetition penalty.
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// OpenAI's frequency penalty (per earlier occurrence in the generated text).
    #[arg(long, allow_negative_numbers = true)]
    frequency_penalty: Option<f32>,
    /// OpenAI's presence penalty (once per token present in the generated text).
    #[arg(long, allow_negative_numbers = true)]
    presence_penalty: Option<f32>,
    /// Add BIAS to token ID's mixed logit at every step, as OpenAI's `logit_bias` (repeatable;
    /// -100 in practice bans the token, 100 forces it).
    #[arg(long, value_name = "ID=BIAS", value_parser = parse_bias, allow_hyphen_values = true)]
    logit_bias: Vec<(u32, f32)>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most new tokens per prompt.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Greedy decoding (argmax).
    #[arg(long)]
    greedy: bool,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Output format: text streams tokens; json prints one object per prompt.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// `ID=BIAS` of `--logit-bias`: a token id and a finite bias.
fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=BIAS (e.g. 42=-100)"))?;
    let id = id
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{id:?} in {s:?} is not a token id"))?;
    let bias = bias
        .trim()
        .parse::<f32>()
        .ok()
        .filter(|b| b.is_finite())
        .ok_or_else(|| format!("{bias:?} in {s:?} is not a finite number"))?;
    Ok((id, bias))
}

/// Most prompts of a `--prompts` file: they decode as one lockstep batch.
const MAX_PROMPTS: usize = 4096;

struct PromptLine {
    text: String,
    mixture: Option<Mixture>,
}

fn read_prompts(path: &Path, aligned: usize) -> Result<Vec<PromptLine>> {
    let mut out = Vec::new();
    for (n, v) in crate::checks::read_jsonl(path)? {
        let Some(prompt) = v.get("prompt").and_then(|p| p.as_str()) else {
            bail!("{}:{n}: no \"prompt\" string", path.display());
        };
        let lambdas = match v.get("lambda") {
            None => None,
            // One number: the same lambda for every aligned model.
            Some(serde_json::Value::Number(x)) => x.as_f64().map(|x| vec![x; aligned.max(1)]),
            Some(serde_json::Value::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_f64().with_context(|| {
                            format!("{}:{n}: lambda must be numbers", path.display())
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(other) => bail!("{}:{n}: invalid lambda {other}", path.display()),
        };
        // Checked here, before any model loads.
        let lambdas = match lambdas {
            Some(l) => {
                if l.len() != aligned {
                    bail!(
                        "{}:{n}: {} lambda value(s) for {aligned} --aligned model(s)",
                        path.display(),
                        l.len()
                    );
                }
                Some(Mixture::new(l).with_context(|| format!("{}:{n}: lambda", path.display()))?)
            }
            None => None,
        };
        out.push(PromptLine {
            text: prompt.to_string(),
            mixture: lambdas,
        });
    }
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    if out.len() > MAX_PROMPTS {
        bail!(
            "{}: {} prompts, but generate decodes all of them as one batch (one KV cache row each); at most {MAX_PROMPTS}: split the file",
            path.display(),
            out.len()
        );
    }
    Ok(out)
}

/// Runs the command.
pub fn run(a: &Args) -> Result<()> {
    let mixture = a.models.mixture()?;
    let lines = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![PromptLine {
            text: p.clone(),
            mixture: None,
        }],
        (None, Some(path)) => read_prompts(path, a.models.aligned.len())?,
        (None, None) => bail!("give --prompt or --prompts"),
    };
    let sampling = SamplingOptions {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        frequency_penalty: a.frequency_penalty,
        presence_penalty: a.presence_penalty,
        logit_bias: a.logit_bias.iter().copied().collect(),
        ..Default::default()
    };
    if a.logit_bias.len() > sampling.logit_bias.len() {
        return Err(crate::args::UsageError(
            "--logit-bias names a token twice: give each token one bias".into(),
        )
        .into());
    }
    let opts = GenerateOptions::new(Decoding {
        max_new_tokens: a.max_new_tokens,
        sampling,
        greedy: a.greedy,
        seed: a.seed,
        stop_strings: a.stop.clone(),
        ..Decoding::default()
    });
    crate::checks::sampling(&opts.decoding.sampling)?;
    let dirs: Vec<&PathBuf> = std::iter::once(&a.models.reference)
        .chain(&a.models.aligned)
        .collect();
    crate::checks::new_tokens_fit(&dirs, a.max_new_tokens, "--max-new-tokens")?;
    let r = a.models.load()?;
    let vocab = r.tokenizer()?.vocab_size().min(r.width());
    if let Some(&id) = opts
        .decoding
        .sampling
        .logit_bias
        .keys()
        .find(|&&id| id as usize >= vocab)
    {
        return Err(crate::args::UsageError(format!(
            "--logit-bias {id}=...: token {id} is not below the vocabulary size {vocab}"
        ))
        .into());
    }
    let mut requests = Vec::with_capacity(lines.len());
    for line in &lines {
        let mixture = line.mixture.clone().unwrap_or_else(|| mixture.clone());
        requests.push(Request {
            prompt_ids: prompt_ids(&r, &line.text, a.chat)?,
            mixture,
            seed: None,
        });
    }
    let tok = r.tokenizer()?;
    let stream = a.format == Format::Text && requests.len() == 1 && a.stop.is_empty();
    let mut detok = tok.stream();
    let mut stdout = std::io::stdout().lock();
    if stream {
        write!(stdout, "{}", lines[0].text)?;
    }
    let gens = r.generate(&requests, &opts, |ev| {
        if stream && let Ok(Some(piece)) = detok.push(ev.token) {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    })?;
    if stream {
        if let Some(rest) = detok.finish()? {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
        return Ok(());
    }
    for ((line, req), g) in lines.iter().zip(&requests).zip(&gens) {
        match a.format {
            Format::Json => writeln!(
                stdout,
                "{}",
                serde_json::json!({
                    "prompt": line.text, "lambdas": req.mixture.lambdas(), "prompt_ids": req.prompt_ids,
                    "tokens": g.tokens, "text": g.text, "finish_reason": g.finish_reason, "timing": g.timing,
                })
            )?,
            Format::Text => writeln!(
                stdout,
                "[lambda {:?}] {}{}",
                req.mixture.lambdas(),
                line.text,
                g.text
            )?,
        }
    }
    Ok(())
}
