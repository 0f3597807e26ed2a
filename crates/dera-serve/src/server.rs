//! The HTTP side: routes, request handling, responses and server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dera::Decoding;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, DEFAULT_COMPLETION_TOKENS, Endpoint, Parsed, PromptInput, ServeInfo};
use crate::engine::{Done, EngineHandle, Event, SeqSpec, TokenLogprob};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

/// Turns prompts into token ids and token ids into text (the reference's tokenizer and chat
/// template), and scores prompts for `echo`.
pub trait Text: Send + Sync {
    /// Token ids of a prompt (special tokens added as `dera generate` adds them).
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Token ids of a conversation rendered with the chat template (the template writes its
    /// own special tokens); `Err` when there is no template or it fails.
    fn encode_chat(&self, messages: &[(String, String)]) -> Result<Vec<u32>, String>;
    /// The text of one token.
    fn token_text(&self, id: u32) -> String;
    /// The text of a prompt given as token ids (what `echo` returns for it); by default the
    /// texts of its tokens one after another.
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&id| self.token_text(id)).collect()
    }
    /// Log-probabilities under `mixture` of every token of `ids` after the first, each with the
    /// `top` most likely tokens (`echo` with `logprobs`); `Err` is a 400 with its message. By
    /// default the server cannot score prompts.
    fn prompt_logprobs(
        &self,
        _ids: &[u32],
        _mixture: &dera::Mixture,
        _top: usize,
    ) -> Result<Vec<TokenLogprob>, String> {
        Err("this server cannot score prompts".into())
    }
}

/// Everything a handler needs.
pub struct AppState {
    /// Validation limits and model ids.
    pub info: ServeInfo,
    /// Tokenizer and chat template.
    pub text: Arc<dyn Text>,
    /// The engine queue.
    pub engine: EngineHandle,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// When the server started (Unix seconds).
    pub created: u64,
    /// Body size limit in bytes.
    pub max_body: usize,
    /// Least time between two chunks of one stream (zero: each chunk as soon as it can go).
    pub stream_interval: Duration,
    next_id: AtomicU64,
    seeds: std::collections::hash_map::RandomState,
}

impl AppState {
    /// Bundles the state.
    pub fn new(
        info: ServeInfo,
        text: Arc<dyn Text>,
        engine: EngineHandle,
        metrics: Arc<Metrics>,
        max_body: usize,
    ) -> Self {
        Self {
            info,
            text,
            engine,
            metrics,
            created: unix_now(),
            max_body,
            stream_interval: Duration::ZERO,
            next_id: AtomicU64::new(0),
            seeds: Default::default(),
        }
    }

    /// Streams send a request's chunks at least `interval` apart (the first at once): text
    /// that comes meanwhile goes out together, in fewer chunks for the client to parse.
    pub fn with_stream_interval(mut self, interval: Duration) -> Self {
        self.stream_interval = interval;
        self
    }

    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.created)
    }

    fn random_seed(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.seeds.build_hasher();
        h.write_u64(self.next_id.fetch_add(1, Ordering::Relaxed));
        h.finish()
    }
}

/// The router: every route, the body limit, metrics and logging.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and logs every request.
async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = match path.as_str() {
        "/health" | "/v1/models" | "/v1/completions" | "/v1/chat/completions" | "/metrics" => {
            path.clone()
        }
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".to_string(),
        _ => "other".to_string(),
    };
    s.metrics.in_flight(true);
    let res = next.run(req).await;
    s.metrics.in_flight(false);
    let status = res.status().as_u16();
    s.metrics.request(&route, status);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    res
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn models(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let data: Vec<Value> = s.info.model_ids[..1]
        .iter()
        .map(|id| model_object(&s, id))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

async fn model(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if s.info.model_ids.contains(&id) {
        axum::Json(model_object(&s, &id)).into_response()
    } else {
        ApiError::new(
            ErrorKind::NotFound,
            format!("the model `{id}` does not exist"),
        )
        .with_code("model_not_found")
        .into_response()
    }
}

fn model_object(s: &AppState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": s.created,
        "owned_by": "dera",
        "max_model_len": s.info.context,
        "aligned_models": s.info.num_aligned,
        "default_lambda": s.info.default_lambda,
    })
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    s.metrics.set_queue(s.engine.queued());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "no route {} {}; this server answers GET /health, /v1/models, /metrics and POST /v1/completions, /v1/chat/completions",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let mut e = ApiError::invalid(
        "",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response();
    *e.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    e
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(s, body, Endpoint::Completions).await
}

async fn chat(State(s): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(s, body, Endpoint::Chat).await
}

async fn handle(
    s: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let received = Instant::now();
    match start(&s, body, endpoint, received) {
        Err(e) => e.into_response(),
        Ok((mut req, rx)) => {
            if let Err(e) = score_echoed(&s, &mut req).await {
                return e.into_response();
            }
            if req.stream {
                return stream(s, req, rx).into_response();
            }
            match collect(&s, &req, rx).await {
                Ok(v) => axum::Json(v).into_response(),
                Err(e) => e.into_response(),
            }
        }
    }
}

/// An echoed prompt: its text, its ids and (with `logprobs`) the log-probabilities of its
/// tokens after the first.
struct Echo {
    text: String,
    ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
}

/// Scores the echoed prompts of a request with `logprobs`, off the async workers (while its
/// sequences, if any, decode in the engine).
async fn score_echoed(s: &Arc<AppState>, req: &mut Accepted) -> Result<(), ApiError> {
    let Some(top) = req.top_logprobs.filter(|_| !req.echo.is_empty()) else {
        return Ok(());
    };
    let prompts: Vec<Vec<u32>> = req.echo.iter().map(|e| e.ids.clone()).collect();
    let (text, mixture) = (s.text.clone(), req.mixture.clone());
    let scored = tokio::task::spawn_blocking(move || {
        prompts
            .iter()
            .map(|ids| text.prompt_logprobs(ids, &mixture, top))
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| ApiError::new(ErrorKind::Server, format!("scoring the prompt: {e}")))?
    .map_err(|e| ApiError::invalid("echo", e))?;
    for (e, lp) in req.echo.iter_mut().zip(scored) {
        e.logprobs = lp;
    }
    Ok(())
}

/// A request on its way: what the response needs to know.
struct Accepted {
    endpoint: Endpoint,
    id: String,
    model: String,
    choices: usize,
    n: usize,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
    kl: bool,
    lambdas: Vec<f64>,
    /// Top log-probabilities per token, when asked for.
    top_logprobs: Option<usize>,
    /// The lambda vector (to score echoed prompts).
    mixture: dera::Mixture,
    /// One per prompt with `echo`, else empty.
    echo: Vec<Echo>,
}

/// Reads, validates and tokenizes the body and queues its sequences.
fn start(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
    received: Instant,
) -> Result<(Accepted, Option<UnboundedReceiver<Event>>), ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::TooLarge,
                format!("the body is larger than the limit of {} bytes", s.max_body),
            )
        } else {
            ApiError::invalid("", format!("cannot read the body: {e}"))
        }
    })?;
    let p = api::parse(&body, endpoint, &s.info)?;
    let prompts = tokenize(s, &p)?;
    let seed = p.seed.unwrap_or_else(|| s.random_seed());
    let mut seqs = Vec::with_capacity(prompts.len() * p.n);
    for (i, ids) in prompts.iter().enumerate() {
        let at = if prompts.len() > 1 {
            format!("prompt[{i}]")
        } else {
            "the prompt".to_string()
        };
        if ids.is_empty() {
            return Err(ApiError::invalid(
                "prompt",
                format!("{at} is empty: nothing to condition on"),
            ));
        }
        let room = s.info.context.saturating_sub(ids.len());
        let max_new = match (p.max_tokens, endpoint) {
            (Some(m), _) => m,
            (None, Endpoint::Completions) => DEFAULT_COMPLETION_TOKENS.min(room.max(1)),
            (None, Endpoint::Chat) => room,
        };
        if ids.len() + max_new > s.info.context || (max_new == 0 && !p.echo) {
            return Err(ApiError::invalid(
                if endpoint == Endpoint::Chat { "messages" } else { "prompt" },
                format!(
                    "{at} has {} tokens; with {max_new} new tokens that is more than the model's context of {} positions",
                    ids.len(),
                    s.info.context
                ),
            )
            .with_code("context_length_exceeded"));
        }
        for j in (0..p.n).filter(|_| max_new > 0) {
            seqs.push(SeqSpec {
                prompt_ids: ids.clone(),
                mixture: p.mixture.clone(),
                decoding: Decoding {
                    max_new_tokens: max_new,
                    sampling: p.sampling.clone(),
                    greedy: p.greedy,
                    seed: seed.wrapping_add((i * p.n + j) as u64),
                    stop_strings: p.stop.clone(),
                    stop_on_eos: true,
                    logprobs: p.logprobs,
                    kl_to_reference: p.kl_to_reference,
                },
            });
        }
    }
    let choices = prompts.len() * p.n;
    // A plain request needs the tokens one by one only for its log-probabilities or KL.
    let every_token = p.stream || p.logprobs.is_some() || p.kl_to_reference;
    // `echo` with `max_tokens: 0` generates nothing: no sequence goes to the engine.
    let rx = if seqs.is_empty() {
        None
    } else {
        Some(s.engine.submit(seqs, received, every_token)?)
    };
    let echo = if p.echo {
        prompts
            .iter()
            .zip(echo_texts(s, &p))
            .map(|(ids, text)| Echo {
                text,
                ids: ids.clone(),
                logprobs: Vec::new(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((
        Accepted {
            endpoint,
            id: s.id(match endpoint {
                Endpoint::Completions => "cmpl",
                Endpoint::Chat => "chatcmpl",
            }),
            model: p.model.clone(),
            choices,
            n: p.n,
            stream: p.stream,
            include_usage: p.include_usage,
            logprobs: p.logprobs.is_some(),
            kl: p.kl_to_reference,
            lambdas: p.mixture.lambdas().to_vec(),
            top_logprobs: p.logprobs,
            mixture: p.mixture.clone(),
            echo,
        },
        rx,
    ))
}

/// The text `echo` returns for each prompt: a prompt string as sent, token ids decoded.
fn echo_texts(s: &AppState, p: &Parsed) -> Vec<String> {
    match &p.prompt {
        PromptInput::Texts(t) => t.clone(),
        PromptInput::Ids(ids) => ids.iter().map(|i| s.text.decode(i)).collect(),
        PromptInput::Chat(_) => Vec::new(),
    }
}

fn tokenize(s: &AppState, p: &Parsed) -> Result<Vec<Vec<u32>>, ApiError> {
    match &p.prompt {
        PromptInput::Ids(ids) => Ok(ids.clone()),
        PromptInput::Texts(texts) => texts
            .iter()
            .map(|t| {
                s.text
                    .encode(t)
                    .map_err(|e| ApiError::invalid("prompt", format!("tokenizing the prompt: {e}")))
            })
            .collect(),
        PromptInput::Chat(messages) => Ok(vec![
            s.text
                .encode_chat(messages)
                .map_err(|e| ApiError::invalid("messages", e))?,
        ]),
    }
}

/// Per-choice results gathered from the events.
#[derive(Default)]
struct ChoiceState {
    /// Bytes of echoed prompt in front of the generated text (text offsets start there).
    echoed: usize,
    streamed: String,
    logprobs: Vec<TokenLogprob>,
    done: Option<Done>,
}

/// Waits for every choice and builds the response object.
async fn collect(
    s: &AppState,
    req: &Accepted,
    rx: Option<UnboundedReceiver<Event>>,
) -> Result<Value, ApiError> {
    let mut choices: Vec<ChoiceState> = (0..req.choices).map(|_| ChoiceState::default()).collect();
    let Some(mut rx) = rx else {
        // Nothing generated (`echo` with `max_tokens: 0`): each choice is its prompt.
        for (index, c) in choices.iter_mut().enumerate() {
            let prompt = req
                .echo
                .get(index / req.n.max(1))
                .map_or(0, |e| e.ids.len());
            c.done = Some(Done {
                id: 0,
                text: String::new(),
                completion_tokens: 0,
                prompt_tokens: prompt,
                finish: crate::engine::Finish::Length,
                error: None,
            });
        }
        return Ok(response(s, req, choices));
    };
    let mut left = req.choices;
    while left > 0 {
        match rx.recv().await {
            None => {
                return Err(ApiError::new(
                    ErrorKind::Server,
                    "the engine stopped before the request finished",
                ));
            }
            Some(Event::Rejected(e)) => return Err(e),
            Some(Event::Token {
                index,
                text,
                logprob,
            }) => {
                if let Some(c) = choices.get_mut(index) {
                    c.streamed.push_str(&text);
                    c.logprobs.extend(logprob);
                }
            }
            Some(Event::Done { index, done }) => {
                if let Some(e) = &done.error {
                    return Err(ApiError::new(ErrorKind::Server, e.clone()));
                }
                if let Some(c) = choices.get_mut(index) {
                    c.done = Some(done);
                    left -= 1;
                }
            }
        }
    }
    Ok(response(s, req, choices))
}

/// The response object of finished choices.
fn response(s: &AppState, req: &Accepted, choices: Vec<ChoiceState>) -> Value {
    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    let mut out = Vec::with_capacity(choices.len());
    for (index, c) in choices.into_iter().enumerate() {
        let Some(done) = c.done else { continue };
        completion_tokens += done.completion_tokens;
        // Each prompt counts once, whatever `n`.
        if index % req.n.max(1) == 0 {
            prompt_tokens += done.prompt_tokens;
        }
        let echo = req.echo.get(index / req.n.max(1));
        let logprobs = req.logprobs.then(|| match echo {
            Some(e) => echo_logprobs_json(s, e, &c.logprobs),
            None => logprobs_json(s, req.endpoint, &c.logprobs, 0),
        });
        let text = match echo {
            Some(e) => format!("{}{}", e.text, done.text),
            None => done.text,
        };
        let mut choice = match req.endpoint {
            Endpoint::Completions => json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": done.finish.as_str(),
            }),
            Endpoint::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": done.finish.as_str(),
            }),
        };
        if req.kl {
            choice["kl_to_reference"] = json!(
                c.logprobs
                    .iter()
                    .map(|t| t.kl_to_reference)
                    .collect::<Vec<_>>()
            );
        }
        out.push(choice);
    }
    json!({
        "id": req.id,
        "object": match req.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        },
        "created": unix_now(),
        "model": req.model,
        "choices": out,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "lambda": req.lambdas,
    })
}

/// Completions log-probabilities of an echoed prompt followed by its choice's tokens: the
/// prompt's first token has none (`null`, as OpenAI), its others what scoring gave, the
/// generated ones what decoding recorded, their offsets counted from the end of the echo.
fn echo_logprobs_json(s: &AppState, e: &Echo, generated: &[TokenLogprob]) -> Value {
    let first = e.ids.first().map(|&id| s.text.token_text(id));
    let prompt = logprobs_json(
        s,
        Endpoint::Completions,
        &e.logprobs,
        first.as_ref().map_or(0, String::len),
    );
    let tail = logprobs_json(s, Endpoint::Completions, generated, e.text.len());
    let mut out = serde_json::Map::new();
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        let head = match key {
            "tokens" => first.clone().map(Value::from),
            "text_offset" => first.as_ref().map(|_| json!(0)),
            _ => first.as_ref().map(|_| Value::Null),
        };
        let list: Vec<Value> = head
            .into_iter()
            .chain(prompt[key].as_array().into_iter().flatten().cloned())
            .chain(tail[key].as_array().into_iter().flatten().cloned())
            .collect();
        out.insert(key.to_string(), Value::Array(list));
    }
    Value::Object(out)
}

/// OpenAI's log-probability objects for `tokens`; `offset` is the text offset of the first.
fn logprobs_json(
    s: &AppState,
    endpoint: Endpoint,
    tokens: &[TokenLogprob],
    offset: usize,
) -> Value {
    match endpoint {
        Endpoint::Completions => {
            let mut text_offset = Vec::with_capacity(tokens.len());
            let mut at = offset;
            let mut strings = Vec::with_capacity(tokens.len());
            for t in tokens {
                let text = s.text.token_text(t.token);
                text_offset.push(at);
                at += text.len();
                strings.push(text);
            }
            let top: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut m = serde_json::Map::new();
                    for &(id, lp) in &t.top {
                        m.insert(s.text.token_text(id), json!(lp));
                    }
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": strings,
                "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": text_offset,
            })
        }
        Endpoint::Chat => {
            let entry = |id: u32, lp: f32| {
                let text = s.text.token_text(id);
                json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
            };
            let content: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut e = entry(t.token, t.logprob);
                    e["top_logprobs"] =
                        Value::Array(t.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
                    e
                })
                .collect();
            json!({"content": content})
        }
    }
}

/// The server-sent event stream of a request.
fn stream(
    s: Arc<AppState>,
    req: Accepted,
    rx: Option<UnboundedReceiver<Event>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let choices: Vec<ChoiceState> = (0..req.choices).map(|_| ChoiceState::default()).collect();
    let state = Streamer {
        s,
        left: req.choices,
        req,
        rx,
        choices,
        out: VecDeque::new(),
        ended: false,
        started: false,
        usage: (0, 0),
        pending: Vec::new(),
        sent: None,
    };
    Sse::new(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.out.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.ended {
                return None;
            }
            st.advance().await;
        }
    }))
}

struct Streamer {
    s: Arc<AppState>,
    req: Accepted,
    /// The engine's events; `None` when nothing is generated (`echo` with `max_tokens: 0`).
    rx: Option<UnboundedReceiver<Event>>,
    choices: Vec<ChoiceState>,
    out: VecDeque<SseEvent>,
    left: usize,
    ended: bool,
    started: bool,
    usage: (usize, usize),
    /// Text of token events not yet queued, per choice in order of first appearance:
    /// (choice, text).
    pending: Vec<(usize, String)>,
    /// When the last chunks went out.
    sent: Option<Instant>,
}

impl Streamer {
    /// Waits for an engine event, then (with a stream interval) until the interval since the
    /// last chunks has passed, takes it and every event queued behind it, and queues the
    /// chunks they make.
    async fn advance(&mut self) {
        if !self.started && self.req.endpoint == Endpoint::Chat {
            // The first chunk of each choice carries the role.
            for index in 0..self.req.choices {
                let c = self.chunk(
                    index,
                    json!({"role": "assistant", "content": ""}),
                    None,
                    None,
                );
                self.push(c);
            }
        }
        if !self.started && !self.req.echo.is_empty() {
            self.echo();
        }
        self.started = true;
        let Some(rx) = self.rx.as_mut() else {
            // Nothing to generate: each choice ends after its prompt.
            for index in 0..self.req.choices {
                let c = self.chunk(index, json!(""), None, Some("length"));
                self.push(c);
                if index % self.req.n.max(1) == 0 {
                    let echo = self.req.echo.get(index / self.req.n.max(1));
                    self.usage.0 += echo.map_or(0, |e| e.ids.len());
                }
            }
            self.finish();
            return;
        };
        let first = rx.recv().await;
        self.take(first);
        if let Some(sent) = self.sent.filter(|_| !self.ended) {
            let due = sent + self.s.stream_interval;
            if Instant::now() < due {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        // Whatever else the engine has sent meanwhile (this task or its client fell behind, or
        // the interval held it): taken now, so that each choice's text goes out as one chunk.
        while !self.ended {
            match self.rx.as_mut().map(UnboundedReceiver::try_recv) {
                Some(Ok(ev)) => self.take(Some(ev)),
                _ => break,
            }
        }
        self.flush_text();
        self.sent = Some(Instant::now());
    }

    /// Queues the chunks of one engine event (`None`: the engine went away). Text-only token
    /// events are gathered into one pending delta per choice, queued before any other event.
    fn take(&mut self, event: Option<Event>) {
        if !matches!(event, Some(Event::Token { .. })) {
            self.flush_text();
        }
        match event {
            None => {
                self.error(ApiError::new(
                    ErrorKind::Server,
                    "the engine stopped before the request finished",
                ));
            }
            Some(Event::Rejected(e)) => self.error(e),
            Some(Event::Token {
                index,
                text,
                logprob,
            }) => {
                let Some(c) = self.choices.get_mut(index) else {
                    return;
                };
                let offset = c.echoed + c.streamed.len();
                c.streamed.push_str(&text);
                let kl = logprob
                    .as_ref()
                    .and_then(|t| t.kl_to_reference)
                    .filter(|_| self.req.kl);
                let lp = logprob.filter(|_| self.req.logprobs);
                if text.is_empty() && lp.is_none() && kl.is_none() {
                    return;
                }
                if lp.is_none() && kl.is_none() {
                    match self.pending.iter_mut().find(|(i, _)| *i == index) {
                        Some((_, t)) => t.push_str(&text),
                        None => self.pending.push((index, text)),
                    }
                    return;
                }
                self.flush_text();
                let lp = lp.map(|t| logprobs_json(&self.s, self.req.endpoint, &[t], offset));
                let mut chunk = self.chunk(index, self.delta(text), lp, None);
                if let Some(kl) = kl {
                    chunk["choices"][0]["kl_to_reference"] = json!(kl);
                }
                self.push(chunk);
            }
            Some(Event::Done { index, done }) => {
                if let Some(e) = &done.error {
                    self.error(ApiError::new(ErrorKind::Server, e.clone()));
                    return;
                }
                let Some(c) = self.choices.get_mut(index) else {
                    return;
                };
                // Whatever the token events held back (never past a stop string) comes last.
                let rest = done
                    .text
                    .strip_prefix(c.streamed.as_str())
                    .unwrap_or_default()
                    .to_string();
                c.streamed.push_str(&rest);
                self.usage.1 += done.completion_tokens;
                if index % self.req.n.max(1) == 0 {
                    self.usage.0 += done.prompt_tokens;
                }
                let finish = done.finish.as_str();
                let chunk = match self.req.endpoint {
                    Endpoint::Completions => self.chunk(index, json!(rest), None, Some(finish)),
                    Endpoint::Chat => {
                        if !rest.is_empty() {
                            let c = self.chunk(index, self.delta(rest), None, None);
                            self.push(c);
                        }
                        self.chunk(index, json!({}), None, Some(finish))
                    }
                };
                self.push(chunk);
                self.left -= 1;
                if self.left == 0 {
                    self.finish();
                }
            }
        }
    }

    /// Queues each choice's echoed prompt as its first chunk (with the prompt's log-probabilities
    /// when asked for); the generated text's offsets follow it.
    fn echo(&mut self) {
        let n = self.req.n.max(1);
        for index in 0..self.req.choices {
            let Some(e) = self.req.echo.get(index / n) else {
                continue;
            };
            let lp = self
                .req
                .logprobs
                .then(|| echo_logprobs_json(&self.s, e, &[]));
            let c = self.chunk(index, json!(e.text), lp, None);
            if let Some(state) = self.choices.get_mut(index) {
                state.echoed = e.text.len();
            }
            self.push(c);
        }
    }

    /// Queues the pending text deltas, one chunk per choice.
    fn flush_text(&mut self) {
        for (index, text) in std::mem::take(&mut self.pending) {
            let c = self.chunk(index, self.delta(text), None, None);
            self.push(c);
        }
    }

    fn delta(&self, text: String) -> Value {
        match self.req.endpoint {
            Endpoint::Completions => json!(text),
            Endpoint::Chat => json!({"content": text}),
        }
    }

    /// One chunk object of choice `index`; `delta` is the text (completions) or the delta
    /// object (chat).
    fn chunk(
        &self,
        index: usize,
        delta: Value,
        logprobs: Option<Value>,
        finish: Option<&str>,
    ) -> Value {
        let choice = match self.req.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish,
            }),
            Endpoint::Chat => json!({
                "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
            }),
        };
        self.envelope(vec![choice])
    }

    fn envelope(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.req.id,
            "object": match self.req.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            },
            "created": unix_now(),
            "model": self.req.model,
            "choices": choices,
        })
    }

    fn push(&mut self, v: Value) {
        self.out.push_back(SseEvent::default().data(v.to_string()));
    }

    fn finish(&mut self) {
        if self.req.include_usage {
            let mut v = self.envelope(Vec::new());
            let (p, c) = self.usage;
            v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
            self.push(v);
        }
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.ended = true;
    }

    /// An error after the stream started: one `{"error": ...}` event, then `[DONE]`.
    fn error(&mut self, e: ApiError) {
        tracing::warn!(message = %e.message, "streamed request failed");
        self.push(e.body());
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.ended = true;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!(
        "shutting down: no new connections; finishing the requests in flight (signal again to stop now)"
    );
    // A second signal stops at once, as an impatient operator expects.
    tokio::spawn(async {
        let again = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = again => {},
            () = term => {},
        }
        tracing::warn!("second signal: stopping without finishing the requests in flight");
        std::process::exit(130);
    });
}

/// The address the server is bound to, for the `listening on` line.
pub fn display_addr(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineLimits, Finish, channel};

    struct Chars;

    impl Text for Chars {
        fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.chars().map(u32::from).collect())
        }
        fn encode_chat(&self, _: &[(String, String)]) -> Result<Vec<u32>, String> {
            Err("no template".into())
        }
        fn token_text(&self, id: u32) -> String {
            char::from_u32(id).map(String::from).unwrap_or_default()
        }
    }

    fn state() -> Arc<AppState> {
        let info = ServeInfo {
            model_ids: vec!["dera".into()],
            num_aligned: 1,
            default_lambda: vec![1.0],
            context: 64,
            vocab: 256,
            max_batch: 4,
        };
        let limits = EngineLimits {
            max_batch: 4,
            max_queue: 4,
        };
        let (engine, _queue) = channel(limits);
        Arc::new(AppState::new(
            info,
            Arc::new(Chars),
            engine,
            Arc::new(Metrics::default()),
            1 << 20,
        ))
    }

    fn accepted(logprobs: bool) -> Accepted {
        Accepted {
            endpoint: Endpoint::Completions,
            id: "cmpl-test".into(),
            model: "dera".into(),
            choices: 2,
            n: 2,
            stream: true,
            include_usage: false,
            logprobs,
            kl: false,
            lambdas: vec![1.0],
            top_logprobs: logprobs.then_some(0),
            mixture: dera::Mixture::single(1.0).expect("lambda 1"),
            echo: Vec::new(),
        }
    }

    fn token(index: usize, text: &str) -> Event {
        Event::Token {
            index,
            text: text.into(),
            logprob: Some(TokenLogprob {
                token: u32::from(text.chars().next().unwrap_or('?')),
                logprob: -0.5,
                top: Vec::new(),
                kl_to_reference: None,
            }),
        }
    }

    fn done(index: usize, text: &str) -> Event {
        Event::Done {
            index,
            done: Done {
                id: index as u64,
                text: text.into(),
                completion_tokens: text.len(),
                prompt_tokens: 1,
                finish: Finish::Length,
                error: None,
            },
        }
    }

    /// The `data:` payloads of a streamed response whose events were all queued before it was
    /// read (as when the client or this task fell behind the engine).
    fn streamed(logprobs: bool, events: Vec<Event>) -> Vec<Value> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for e in events {
            tx.send(e).ok();
        }
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let body = rt.block_on(async {
            let response = stream(state(), accepted(logprobs), Some(rx)).into_response();
            axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body")
        });
        String::from_utf8_lossy(&body)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.into())))
            .collect()
    }

    fn texts(chunks: &[Value]) -> Vec<(u64, String)> {
        chunks
            .iter()
            .filter_map(|c| {
                let c = &c["choices"][0];
                Some((c["index"].as_u64()?, c["text"].as_str()?.to_string()))
            })
            .collect()
    }

    /// Queued tokens go out as one chunk per choice, each choice's text in order and before
    /// its finish.
    #[test]
    fn queued_tokens_of_one_choice_go_out_as_one_chunk() {
        let events = vec![
            token(0, "a"),
            token(0, "b"),
            token(1, "x"),
            token(1, "y"),
            token(0, "c"),
            done(0, "abc"),
            done(1, "xyz"),
        ];
        let chunks = streamed(false, events);
        assert_eq!(
            texts(&chunks),
            [
                (0, "abc".into()),
                (1, "xy".into()),
                (0, String::new()),
                (1, "z".into()),
            ]
        );
        assert_eq!(chunks.last(), Some(&Value::String("[DONE]".into())));
        // Finish reasons on the last chunk of each choice only.
        let finished: Vec<bool> = chunks[..chunks.len() - 1]
            .iter()
            .map(|c| c["choices"][0]["finish_reason"].is_string())
            .collect();
        assert_eq!(finished, [false, false, true, true]);
    }

    #[test]
    fn tokens_with_logprobs_keep_one_chunk_each() {
        let events = vec![token(0, "a"), token(0, "b"), done(0, "ab"), done(1, "")];
        let chunks = streamed(true, events);
        let t = texts(&chunks);
        assert_eq!(t[..2], [(0, "a".into()), (0, "b".into())]);
        for c in &chunks[..2] {
            assert_eq!(
                c["choices"][0]["logprobs"]["tokens"]
                    .as_array()
                    .map(Vec::len),
                Some(1)
            );
        }
    }
}
