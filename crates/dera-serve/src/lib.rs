//! `dera serve`: an OpenAI-compatible HTTP server over the dera engine.
//!
//! Every request carries its own alignment strength (`lambda`, one per aligned model), sampling
//! options and seed, and decodes in one shared batch with the others (continuous batching).
//!
//! The flow: [`serve`] loads nothing itself; it takes a loaded [`dera::Realigner`], starts the
//! engine thread ([`engine::run`] driving a `dera::Session` through the [`engine::Decoder`]
//! trait), binds the socket and answers HTTP with axum:
//!
//! - the HTTP side ([`server`]) parses and validates each body ([`api`]), tokenizes the prompt
//!   (chat template for `/v1/chat/completions`), and submits the request's sequences to the
//!   engine queue ([`engine::EngineHandle::submit`]; a full queue is a 429);
//! - the engine thread admits queued sequences into the running batch at each step, up to
//!   `max_batch`, and sends every token back over the request's channel; a dropped channel
//!   (client disconnected) cancels its sequences. The batch may be split into [`shards`] that
//!   step side by side (by default when the models are small enough to stay in cache);
//! - responses are OpenAI completion objects or server-sent events ending in `data: [DONE]`;
//!   errors are `{"error": {"message", "type", ...}}` ([`ApiError`]);
//! - `/metrics` renders [`metrics::Metrics`] in the Prometheus text format;
//! - SIGINT/SIGTERM stop accepting connections, finish the requests in flight, and return.

#![deny(missing_docs)]

pub mod api;
pub mod engine;
mod error;
pub mod metrics;
pub mod server;
mod session;
pub mod shards;

use std::net::SocketAddr;
use std::sync::Arc;

use dera::{ChatTemplate, Realigner};

pub use error::{ApiError, ErrorKind, ServeError};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// How the server listens and batches.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Interface to bind (loopback by default).
    pub host: String,
    /// Port; `0` picks a free one.
    pub port: u16,
    /// Most sequences decoding at once.
    pub max_batch: usize,
    /// Most sequences waiting for a place in the batch (more is a 429).
    pub max_queue: usize,
    /// Largest request body in bytes (more is a 413).
    pub max_body_bytes: usize,
    /// Lambda for requests that give none (`None`: 1 for every aligned model; one value: that
    /// value for every aligned model).
    pub default_lambda: Option<Vec<f64>>,
    /// The model id clients name (listed by `/v1/models`).
    pub model_name: String,
    /// Batches decoding side by side ([`shards`]); `None`: [`auto_shards`].
    pub shards: Option<usize>,
    /// Least time between two chunks of one streamed response (zero, the default: every
    /// token's text as soon as it can go). A few milliseconds, invisible to a reader, let
    /// the text of several tokens go as one chunk: fewer chunks for the client to parse and
    /// the server to write.
    pub stream_interval: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            max_batch: 32,
            max_queue: 256,
            max_body_bytes: 1 << 20,
            default_lambda: None,
            model_name: "dera".into(),
            shards: None,
            stream_interval: std::time::Duration::ZERO,
        }
    }
}

/// The shards [`serve`] runs when none is asked for: one per compute thread (at most
/// `max_batch`) when the models' weights stay in cache ([`Realigner::fits_in_cache`]: at most
/// [`dera::CACHED_PARAMS`] parameters), since one batch then saves no memory traffic and shards
/// keep every core busy; else one batch, which reads the weights once per step for all its
/// rows.
pub fn auto_shards(r: &Realigner, threads: usize, max_batch: usize) -> usize {
    if r.fits_in_cache() {
        threads.clamp(1, max_batch.max(1))
    } else {
        1
    }
}

/// The reference's tokenizer and chat template.
struct RealignerText {
    r: Arc<Realigner>,
    chat: Result<ChatTemplate, String>,
}

impl server::Text for RealignerText {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let tok = self.r.tokenizer().map_err(|e| e.to_string())?;
        tok.encode(text).map_err(|e| e.to_string())
    }

    fn encode_chat(&self, messages: &[(String, String)]) -> Result<Vec<u32>, String> {
        let template = self.chat.as_ref().map_err(Clone::clone)?;
        let messages: Vec<(&str, &str)> = messages
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_str()))
            .collect();
        let rendered = template
            .render(&messages, true)
            .map_err(|e| e.to_string())?;
        // The template writes its own special tokens, as `dera generate --chat` does.
        let tok = self.r.tokenizer().map_err(|e| e.to_string())?;
        tok.encode_with(&rendered, false).map_err(|e| e.to_string())
    }

    fn token_text(&self, id: u32) -> String {
        self.r
            .tokenizer()
            .ok()
            .and_then(|t| t.decode(&[id]).ok())
            .unwrap_or_default()
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.r
            .tokenizer()
            .ok()
            .and_then(|t| t.decode(ids).ok())
            .unwrap_or_default()
    }

    fn prompt_logprobs(
        &self,
        ids: &[u32],
        mixture: &dera::Mixture,
        top: usize,
    ) -> Result<Vec<engine::TokenLogprob>, String> {
        // One forward pass per model keeps every position's logits: bound them first.
        let bytes = ids
            .len()
            .saturating_mul(self.r.width())
            .saturating_mul(self.r.models().len() + 1)
            .saturating_mul(4);
        if bytes > MAX_SCORE_BYTES {
            return Err(format!(
                "scoring a prompt of {} tokens needs {} MiB of logits, more than this server's {} MiB: send a shorter prompt",
                ids.len(),
                bytes >> 20,
                MAX_SCORE_BYTES >> 20
            ));
        }
        self.r
            .prompt_logprobs(ids, mixture, top)
            .map(|v| v.into_iter().map(session::logprob).collect())
            .map_err(|e| e.to_string())
    }
}

/// Most bytes of logits one `echo` + `logprobs` request may hold while its prompt is scored.
pub const MAX_SCORE_BYTES: usize = 1 << 30;

/// Serves `realigner` until SIGINT/SIGTERM, then finishes the requests in flight and returns.
/// `on_listening` is called with the bound address once the socket accepts connections.
pub fn serve(
    realigner: Realigner,
    config: ServerConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let r = Arc::new(realigner);
    let k = r.num_aligned();
    // One value is the same lambda for every aligned model.
    let default_lambda = match config.default_lambda.as_deref() {
        None => vec![1.0; k],
        Some(&[one]) if k > 1 => vec![one; k],
        Some(l) => l.to_vec(),
    };
    if default_lambda.len() != k {
        return Err(ServeError::Config(format!(
            "{} default lambda value(s) for {k} aligned model(s)",
            default_lambda.len()
        )));
    }
    dera::Mixture::new(default_lambda.clone())
        .map_err(|e| ServeError::Config(format!("default lambda: {e}")))?;
    let vocab = r.tokenizer()?.vocab_size().min(r.width());
    let mut model_ids = vec![config.model_name.clone()];
    // The reference directory's name is accepted too (clients often name the model so).
    if let Some(name) = r
        .reference_dir()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        && !model_ids.iter().any(|m| m == name)
    {
        model_ids.push(name.to_string());
    }
    let info = api::ServeInfo {
        model_ids,
        num_aligned: k,
        default_lambda,
        context: r.context_len().0,
        vocab,
        max_batch: config.max_batch.max(1),
    };
    let chat = r.chat_template().map_err(|e| e.to_string());
    let text = Arc::new(RealignerText { r: r.clone(), chat });
    let limits = engine::EngineLimits {
        max_batch: config.max_batch.max(1),
        max_queue: config.max_queue,
    };
    let shards = match config.shards {
        Some(n) => n.clamp(1, limits.max_batch),
        None => auto_shards(&r, rayon::current_num_threads(), limits.max_batch),
    };
    tracing::info!(
        shards,
        prompt_cache_bytes = r.prompt_cache_stats().budget,
        stream_interval_ms = config.stream_interval.as_secs_f64() * 1e3,
        "batches side by side"
    );
    let metrics = Arc::new(metrics::Metrics::default());
    let (handle, queue) = engine::channel(limits);
    let engine_metrics = metrics.clone();
    let engine_r = r.clone();
    let engine = std::thread::Builder::new()
        .name("dera-engine".into())
        .spawn(move || {
            // The loop runs on a worker of the rayon pool, so each forward pass forks its
            // row-split products there instead of waking the pool from outside and sleeping
            // on a latch, several times per step.
            rayon::scope(|_| {
                let mut decoder = shards::Shards::new(
                    (0..shards)
                        .map(|_| session::SessionDecoder::new(&engine_r))
                        .collect(),
                );
                engine::run(&mut decoder, queue, limits, &engine_metrics);
            });
        })?;
    let state = Arc::new(
        server::AppState::new(info, text, handle, metrics, config.max_body_bytes)
            .with_stream_interval(config.stream_interval),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dera-http")
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "listening");
        on_listening(bound);
        axum::serve(listener, server::router(state))
            .with_graceful_shutdown(server::shutdown_signal())
            .await?;
        Ok::<(), ServeError>(())
    });
    // The router and its engine handle are gone (any task left is dropped with the runtime):
    // the engine finishes what it holds and stops.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let joined = engine
        .join()
        .map_err(|_| ServeError::EngineThread("it panicked".into()));
    result?;
    joined?;
    let kept = r.prompt_cache_stats();
    tracing::info!(
        prompt_cache_hits = kept.hits,
        prompt_cache_misses = kept.misses,
        prompt_cache_bytes = kept.bytes,
        "stopped"
    );
    Ok(())
}
