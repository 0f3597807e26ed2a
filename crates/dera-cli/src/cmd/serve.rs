//! `dera serve`.

use std::io::Write;

use anyhow::{Context, Result};
use dera_serve::ServerConfig;

use crate::args::{ModelArgs, UsageError, lambdas_for};

/// Serve the mixture over an OpenAI-compatible HTTP API.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The models; `--lambda` is the default for requests that give no `lambda` (else 1).
    #[command(flatten)]
    models: ModelArgs,
    /// Interface to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the `listening on` line names it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most sequences decoding at once (one batch; requests join it as others finish).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_batch: u64,
    /// Most sequences waiting for a place in the batch; more get 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    max_body_bytes: u64,
    /// The model id clients send as `model` (the reference directory's name is accepted too).
    #[arg(long, default_value = "dera")]
    model_name: String,
    /// Batches decoding side by side, each on its own cores (`auto`: one per core when the
    /// models' weights fit in cache, up to 8M parameters together, else 1). Outputs are the
    /// same whatever the number.
    #[arg(long, default_value = "auto", value_parser = parse_shards)]
    shards: Shards,
    /// MiB of prefilled prompts kept for later requests (each model's keys, values and
    /// next-token logits per prompt, whatever the lambda): a request whose prompt was seen
    /// joins the batch without running it again, one that continues a seen prompt (the next
    /// turn of a chat) or shares its first tokens with one (a system prompt) runs only the
    /// rest; the same output either way. 0 keeps none.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=(1 << 20)))]
    prompt_cache_mb: u64,
    /// Least milliseconds between two chunks of one streamed response (0: each token's text
    /// as soon as it can go). A few milliseconds, invisible to a reader, send the text of
    /// several tokens per chunk: less parsing for streaming clients (the `openai` client
    /// spends ~0.2 ms per chunk), more throughput.
    #[arg(long, default_value_t = 0.0, value_parser = parse_interval_ms)]
    stream_interval_ms: f64,
}

/// `--stream-interval-ms`: a number of milliseconds from 0 to 1000.
fn parse_interval_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(ms) if (0.0..=1000.0).contains(&ms) => Ok(ms),
        _ => Err(format!("{s:?}: give milliseconds from 0 to 1000")),
    }
}

/// `--shards`: `auto` or a count.
#[derive(Debug, Clone, Copy)]
enum Shards {
    Auto,
    Count(usize),
}

fn parse_shards(s: &str) -> Result<Shards, String> {
    if s == "auto" {
        return Ok(Shards::Auto);
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(Shards::Count(n)),
        _ => Err(format!("{s:?}: give `auto` or a number from 1 to 1024")),
    }
}

/// Runs the command: loads the models, then serves until SIGINT/SIGTERM.
pub fn run(a: &Args) -> Result<()> {
    let default_lambda = if a.models.lambda.is_empty() {
        None
    } else {
        Some(
            lambdas_for(&a.models.lambda, a.models.aligned.len())?
                .lambdas()
                .to_vec(),
        )
    };
    if a.model_name.is_empty() {
        return Err(UsageError("--model-name must not be empty".into()).into());
    }
    init_logging();
    let r = a.models.load()?;
    r.set_prompt_cache_bytes((a.prompt_cache_mb as usize) << 20);
    let config = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        max_batch: a.max_batch as usize,
        max_queue: a.max_queue,
        max_body_bytes: a.max_body_bytes as usize,
        default_lambda,
        model_name: a.model_name.clone(),
        shards: match a.shards {
            Shards::Auto => None,
            Shards::Count(n) => Some(n),
        },
        stream_interval: std::time::Duration::from_secs_f64(a.stream_interval_ms / 1e3),
    };
    dera_serve::serve(r, config, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    })
    .context("dera serve")
}

/// Structured logs on stderr; `RUST_LOG` filters them (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
