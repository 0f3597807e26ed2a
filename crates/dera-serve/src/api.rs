//! OpenAI request bodies: parsing and validating every field, with messages that name it.
//!
//! Bodies are read as JSON objects and each field is checked by hand, so a wrong type, a value
//! out of range or an unsupported option is a 400 naming the field and the value. Unknown fields
//! are ignored (clients send many), except options dera cannot honour (`best_of`, `suffix`,
//! `tools`, `echo` in chat), which are refused rather than silently dropped.

use std::collections::BTreeMap;

use dera::{Mixture, SamplingOptions};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorKind};

/// Most stop strings (as OpenAI).
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 1024;
/// Largest `n`.
pub const MAX_N: usize = 128;
/// Most top log-probabilities per token.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most `logit_bias` entries (OpenAI allows 300).
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Largest `logit_bias` magnitude (as OpenAI).
pub const MAX_BIAS: f64 = 100.0;
/// Default `max_tokens` of `/v1/completions` (as OpenAI).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// What validation needs to know about the models and the server.
#[derive(Debug, Clone)]
pub struct ServeInfo {
    /// The model ids `/v1/models` lists and requests may name.
    pub model_ids: Vec<String>,
    /// Number of aligned models K.
    pub num_aligned: usize,
    /// Lambda when a request gives none.
    pub default_lambda: Vec<f64>,
    /// Context length (positions) of the models.
    pub context: usize,
    /// Vocabulary size (token ids in a prompt must be below it).
    pub vocab: usize,
    /// Most sequences one request may ask for (`--max-batch`).
    pub max_batch: usize,
}

/// The prompt(s) of a request, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// Prompt strings.
    Texts(Vec<String>),
    /// Pre-tokenized prompts.
    Ids(Vec<Vec<u32>>),
    /// A chat conversation of `(role, content)`.
    Chat(Vec<(String, String)>),
}

/// Which endpoint a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The model id asked for.
    pub model: String,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Choices per prompt.
    pub n: usize,
    /// `max_tokens`, when given.
    pub max_tokens: Option<usize>,
    /// The lambda vector.
    pub mixture: Mixture,
    /// Built-in processors.
    pub sampling: SamplingOptions,
    /// `temperature: 0`.
    pub greedy: bool,
    /// The seed, when given.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// `kl_to_reference` (extra): report `KL(p_mix || p_ref)` of every generated position.
    pub kl_to_reference: bool,
    /// `echo` (completions): the prompt in front of each choice's text (and its tokens'
    /// log-probabilities in front of the choice's); `max_tokens` may then be 0.
    pub echo: bool,
}

/// Parses and validates a body for `endpoint`.
pub fn parse(body: &[u8], endpoint: Endpoint, info: &ServeInfo) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "",
            format!("the body is not valid JSON: {e} (NaN and Infinity are not JSON numbers)"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            "",
            format!("the body must be a JSON object, got {}", kind_of(&value)),
        ));
    };
    let f = Fields(map);

    let model = f
        .string("model")?
        .ok_or_else(|| ApiError::invalid("model", "missing field `model`"))?;
    if !info.model_ids.contains(&model) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "the model `{model}` does not exist; this server serves {}",
                info.model_ids
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_code("model_not_found"));
    }

    for (name, unsupported) in [
        (
            "echo",
            endpoint == Endpoint::Chat && f.bool("echo")? == Some(true),
        ),
        ("best_of", f.uint("best_of")?.is_some_and(|b| b > 1)),
        ("suffix", f.get("suffix").is_some()),
        (
            "tools",
            f.get("tools")
                .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())),
        ),
        (
            "functions",
            f.get("functions")
                .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())),
        ),
    ] {
        if unsupported {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server"),
            ));
        }
    }
    if let Some(rf) = f.get("response_format") {
        let kind = rf.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                "only `response_format: {\"type\": \"text\"}` is supported",
            ));
        }
    }

    let prompt = match endpoint {
        Endpoint::Completions => parse_prompt(&f, info)?,
        Endpoint::Chat => parse_messages(&f)?,
    };
    let prompts = match &prompt {
        PromptInput::Texts(t) => t.len(),
        PromptInput::Ids(t) => t.len(),
        PromptInput::Chat(_) => 1,
    };

    let n = match f.uint("n")? {
        None => 1,
        Some(n) if (1..=MAX_N as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ));
        }
    };
    let seqs = n.saturating_mul(prompts);
    if seqs > info.max_batch {
        return Err(ApiError::invalid(
            if prompts > 1 { "prompt" } else { "n" },
            format!(
                "{prompts} prompt(s) x n = {n} asks for {seqs} sequences; this server decodes at most {} at once (--max-batch)",
                info.max_batch
            ),
        ));
    }

    let max_tokens = match endpoint {
        Endpoint::Chat => match f.uint("max_completion_tokens")? {
            Some(m) => Some(("max_completion_tokens", m)),
            None => f.uint("max_tokens")?.map(|m| ("max_tokens", m)),
        },
        Endpoint::Completions => f.uint("max_tokens")?.map(|m| ("max_tokens", m)),
    };
    // `echo` (completions): the prompt comes back in front of the text; with `max_tokens: 0`
    // nothing is generated (a prompt scored by its log-probabilities, as evaluation harnesses
    // ask for).
    let echo = endpoint == Endpoint::Completions && f.bool("echo")?.unwrap_or(false);
    let max_tokens = match max_tokens {
        None => None,
        Some((_, 0)) if echo => Some(0),
        Some((name, 0)) => {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` must be at least 1 (0 only with `echo`)"),
            ));
        }
        Some((name, m)) if m > info.context as u64 => {
            return Err(ApiError::invalid(
                name,
                format!(
                    "`{name}` = {m} is more than the model's context of {} positions",
                    info.context
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Some((_, m)) => Some(m as usize),
    };

    let mixture = parse_lambda(&f, info)?;

    let temperature = f.range("temperature", 0.0, 2.0)?;
    let greedy = temperature == Some(0.0);
    let top_p = f.number("top_p")?;
    if let Some(p) = top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1], got {p}"),
        ));
    }
    let top_k = match f.get("top_k") {
        // vLLM's "-1 = disabled" is accepted too.
        Some(v) if v.as_i64() == Some(-1) => None,
        _ => f.uint("top_k")?.map(|k| k as usize),
    };
    let min_p = f.range("min_p", 0.0, 1.0)?;
    let repetition_penalty = f.number("repetition_penalty")?;
    if let Some(r) = repetition_penalty
        && !(r > 0.0 && r <= 100.0)
    {
        return Err(ApiError::invalid(
            "repetition_penalty",
            format!("`repetition_penalty` must be in (0, 100], got {r}"),
        ));
    }
    let presence = f.range("presence_penalty", -2.0, 2.0)?;
    let frequency = f.range("frequency_penalty", -2.0, 2.0)?;
    let sampling = SamplingOptions {
        temperature: temperature.filter(|&t| t > 0.0).map(|t| t as f32),
        top_k,
        top_p: top_p.map(|p| p as f32),
        min_p: min_p.map(|p| p as f32),
        repetition_penalty: repetition_penalty.map(|r| r as f32),
        frequency_penalty: frequency.map(|p| p as f32),
        presence_penalty: presence.map(|p| p as f32),
        logit_bias: parse_logit_bias(&f, info)?,
        ..Default::default()
    };
    dera::dera_logits::ProcessorChain::from_options(&sampling)
        .map_err(|e| ApiError::invalid("", format!("sampling options: {e}")))?;

    let seed = match f.get("seed") {
        None => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            // A negative seed keeps its 64 bits.
            (None, Some(s)) => Some(s as u64),
            _ => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("`seed` must be an integer, got {v}"),
                ));
            }
        },
    };

    let stop = parse_stop(&f)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    format!("`stream_options.include_usage` must be a boolean, got {v}"),
                ));
            }
        },
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("`stream_options` must be an object, got {}", kind_of(v)),
            ));
        }
    };

    let logprobs = match endpoint {
        Endpoint::Completions => match f.uint("logprobs")? {
            None => None,
            Some(k) if k <= MAX_TOP_LOGPROBS as u64 => Some(k as usize),
            Some(k) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                ));
            }
        },
        Endpoint::Chat => {
            let on = f.bool("logprobs")?.unwrap_or(false);
            let top = f.uint("top_logprobs")?;
            match (on, top) {
                (_, Some(k)) if k > MAX_TOP_LOGPROBS as u64 => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                    ));
                }
                (false, Some(k)) if k > 0 => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "`top_logprobs` needs `logprobs: true`",
                    ));
                }
                (true, k) => Some(k.unwrap_or(0) as usize),
                (false, _) => None,
            }
        }
    };

    let kl_to_reference = f.bool("kl_to_reference")?.unwrap_or(false);

    Ok(Parsed {
        kl_to_reference,
        echo,
        model,
        prompt,
        n,
        max_tokens,
        mixture,
        sampling,
        greedy,
        seed,
        stop,
        stream,
        include_usage,
        logprobs,
    })
}

/// `lambda`: a number (the same for every aligned model) or a list of one number per aligned
/// model; the server's default when absent.
fn parse_lambda(f: &Fields, info: &ServeInfo) -> Result<Mixture, ApiError> {
    let k = info.num_aligned;
    let lambdas = match f.get("lambda") {
        None => info.default_lambda.clone(),
        Some(Value::Number(x)) => vec![number(x, "lambda")?; k.max(1)],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Number(x) => number(x, "lambda"),
                other => Err(ApiError::invalid(
                    "lambda",
                    format!(
                        "`lambda[{i}]` must be a number, got {}",
                        shorten(&other.to_string())
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(
                "lambda",
                format!(
                    "`lambda` must be a number or a list of {k} number(s) (one per aligned model), got {}",
                    shorten(&other.to_string())
                ),
            ));
        }
    };
    if lambdas.len() != k {
        return Err(ApiError::invalid(
            "lambda",
            format!(
                "{} lambda value(s) given for {k} aligned model(s): give one per aligned model, in order",
                lambdas.len()
            ),
        ));
    }
    Mixture::new(lambdas).map_err(|e| ApiError::invalid("lambda", format!("`lambda`: {e}")))
}

fn number(x: &serde_json::Number, field: &str) -> Result<f64, ApiError> {
    x.as_f64()
        .filter(|v| v.is_finite())
        .ok_or_else(|| ApiError::invalid(field, format!("`{field}`: {x} is not a finite number")))
}

/// `logit_bias`: an object from token ids (decimal strings, as JSON keys must be) to biases in
/// `[-100, 100]`, added to the mixed logits at every step.
fn parse_logit_bias(f: &Fields, info: &ServeInfo) -> Result<BTreeMap<u32, f32>, ApiError> {
    const FIELD: &str = "logit_bias";
    let Some(v) = f.get(FIELD) else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = v else {
        return Err(ApiError::invalid(
            FIELD,
            format!(
                "`logit_bias` must be an object from token ids to numbers, got {}",
                kind_of(v)
            ),
        ));
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            FIELD,
            format!(
                "`logit_bias` has {} entries; at most {MAX_LOGIT_BIAS} are allowed",
                map.len()
            ),
        ));
    }
    let mut bias = BTreeMap::new();
    for (key, value) in map {
        let at = format!("logit_bias[{}]", shorten(&format!("{key:?}")));
        let token = key
            .parse::<u32>()
            .ok()
            .filter(|&t| (t as usize) < info.vocab)
            .ok_or_else(|| {
                ApiError::invalid(
                    FIELD,
                    format!(
                        "`{at}`: keys must be token ids below the vocabulary size {}",
                        info.vocab
                    ),
                )
            })?;
        let b = match value {
            Value::Number(x) => number(x, &at)?,
            v => {
                return Err(ApiError::invalid(
                    FIELD,
                    format!("`{at}` must be a number, got {}", kind_of(v)),
                ));
            }
        };
        if !(-MAX_BIAS..=MAX_BIAS).contains(&b) {
            return Err(ApiError::invalid(
                FIELD,
                format!("`{at}` must be between -{MAX_BIAS} and {MAX_BIAS}, got {b}"),
            ));
        }
        bias.insert(token, b as f32);
    }
    Ok(bias)
}

/// `prompt`: a string, a list of strings, a list of token ids or a list of such lists.
fn parse_prompt(f: &Fields, info: &ServeInfo) -> Result<PromptInput, ApiError> {
    let bad = |what: String| ApiError::invalid("prompt", what);
    let ids = |items: &[Value], at: &str| -> Result<Vec<u32>, ApiError> {
        items
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&id| id < info.vocab as u64)
                    .map(|id| id as u32)
                    .ok_or_else(|| {
                        bad(format!(
                            "`{at}` holds {v}, which is not a token id (0..{})",
                            info.vocab
                        ))
                    })
            })
            .collect()
    };
    match f.get("prompt") {
        None => Err(bad("missing field `prompt`".into())),
        Some(Value::String(s)) => Ok(PromptInput::Texts(vec![s.clone()])),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(bad("`prompt` is an empty list".into()))
        }
        Some(Value::Array(items)) => {
            if items.iter().all(Value::is_string) {
                Ok(PromptInput::Texts(
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                ))
            } else if items.iter().all(Value::is_number) {
                Ok(PromptInput::Ids(vec![ids(items, "prompt")?]))
            } else if items.iter().all(Value::is_array) {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ids(v.as_array().map_or(&[], |a| a), &format!("prompt[{i}]")))
                    .collect::<Result<_, _>>()
                    .map(PromptInput::Ids)
            } else {
                Err(bad(
                    "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of token ids".into(),
                ))
            }
        }
        Some(other) => Err(bad(format!(
            "`prompt` must be a string or a list of strings, got {}",
            kind_of(other)
        ))),
    }
}

/// `messages`: a non-empty list of `{"role", "content"}`; content is a string, null, or a list
/// of text parts.
fn parse_messages(f: &Fields) -> Result<PromptInput, ApiError> {
    let bad = |what: String| ApiError::invalid("messages", what);
    let items = match f.get("messages") {
        None => return Err(bad("missing field `messages`".into())),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad("`messages` is an empty list".into()));
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(format!(
                "`messages` must be a list, got {}",
                kind_of(other)
            )));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return Err(bad(format!("`messages[{i}].role` must be a string")));
        };
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(bad(format!(
                "`messages[{i}].role` is `{}`; expected system, developer, user, assistant or tool",
                shorten(role)
            )));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(bad(format!(
                                "`messages[{i}].content[{j}]` must be a text part {{\"type\": \"text\", \"text\": ...}}"
                            )));
                        }
                    }
                }
                text
            }
            _ => {
                return Err(bad(format!(
                    "`messages[{i}].content` must be a string or a list of text parts"
                )));
            }
        };
        out.push((role.to_string(), content));
    }
    Ok(PromptInput::Chat(out))
}

/// `stop`: a string or a list of at most [`MAX_STOP`] non-empty strings.
fn parse_stop(f: &Fields) -> Result<Vec<String>, ApiError> {
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        "stop",
                        format!("`stop` must hold strings, got {}", kind_of(v)),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop` must be a string or a list of strings, got {}",
                    kind_of(other)
                ),
            ));
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("`stop` holds {} strings; at most {MAX_STOP}", stop.len()),
        ));
    }
    if let Some(s) = stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop strings must have 1 to {MAX_STOP_BYTES} bytes, got one of {}",
                s.len()
            ),
        ));
    }
    Ok(stop)
}

/// Typed access to the fields of a body; `null` counts as absent.
struct Fields(Map<String, Value>);

impl Fields {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a string, got {}", kind_of(v)),
            )),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be true or false, got {}", kind_of(v)),
            )),
        }
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(x)) if x.as_u64().is_some() => Ok(x.as_u64()),
            // 16.0 is an integer too (some clients send floats).
            Some(Value::Number(x))
                if x.as_f64()
                    .is_some_and(|v| v >= 0.0 && v.fract() == 0.0 && v < 1.8e19) =>
            {
                Ok(x.as_f64().map(|v| v as u64))
            }
            Some(v) => Err(ApiError::invalid(
                name,
                format!(
                    "`{name}` must be a non-negative integer, got {}",
                    shorten(&v.to_string())
                ),
            )),
        }
    }

    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(x)) => number(x, name).map(Some),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a number, got {}", shorten(&v.to_string())),
            )),
        }
    }

    /// A number in `[lo, hi]`.
    fn range(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        let v = self.number(name)?;
        if let Some(x) = v
            && !(lo..=hi).contains(&x)
        {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` must be between {lo} and {hi}, got {x}"),
            ));
        }
        Ok(v)
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// At most 80 characters of a value, for messages.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(77).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ServeInfo {
        ServeInfo {
            model_ids: vec!["dera".into()],
            num_aligned: 2,
            default_lambda: vec![1.0, 1.0],
            context: 256,
            vocab: 1536,
            max_batch: 8,
        }
    }

    fn parse_json(v: Value, endpoint: Endpoint) -> Result<Parsed, ApiError> {
        parse(v.to_string().as_bytes(), endpoint, &info())
    }

    #[test]
    fn a_full_request_is_read_field_by_field() {
        let p = parse_json(
            serde_json::json!({
                "model": "dera", "prompt": ["a", "b"], "max_tokens": 9, "temperature": 0.5,
                "top_p": 0.9, "seed": -1, "stop": "x", "n": 2, "stream": true,
                "stream_options": {"include_usage": true}, "logprobs": 3, "lambda": [0.25, 2],
                "user": "ignored", "frequency_penalty": 0.5, "logit_bias": {"7": -100, "12": 2.5}
            }),
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(
            p.sampling.logit_bias,
            BTreeMap::from([(7, -100.0), (12, 2.5)])
        );
        assert_eq!(p.prompt, PromptInput::Texts(vec!["a".into(), "b".into()]));
        assert_eq!(p.max_tokens, Some(9));
        assert_eq!(p.sampling.temperature, Some(0.5));
        assert_eq!(p.sampling.top_p, Some(0.9));
        assert_eq!(p.sampling.frequency_penalty, Some(0.5));
        assert!(!p.greedy);
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.stop, vec!["x".to_string()]);
        assert_eq!(
            (p.n, p.stream, p.include_usage, p.logprobs),
            (2, true, true, Some(3))
        );
        assert_eq!(p.mixture.lambdas(), &[0.25, 2.0]);
    }

    #[test]
    fn defaults_and_greedy() {
        let p = parse_json(
            serde_json::json!({"model": "dera", "prompt": [1, 2, 3], "temperature": 0}),
            Endpoint::Completions,
        )
        .unwrap();
        assert!(p.greedy);
        assert_eq!(p.sampling.temperature, None);
        assert_eq!(p.prompt, PromptInput::Ids(vec![vec![1, 2, 3]]));
        assert_eq!(p.mixture.lambdas(), &[1.0, 1.0]);
        assert_eq!(
            (p.n, p.max_tokens, p.seed, p.logprobs),
            (1, None, None, None)
        );
    }

    #[test]
    fn chat_messages_and_logprobs() {
        let p = parse_json(
            serde_json::json!({"model": "dera", "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}
            ], "logprobs": true, "top_logprobs": 2, "max_completion_tokens": 5}),
            Endpoint::Chat,
        )
        .unwrap();
        assert_eq!(
            p.prompt,
            PromptInput::Chat(vec![
                ("system".into(), "s".into()),
                ("user".into(), "ab".into()),
                ("assistant".into(), String::new()),
            ])
        );
        assert_eq!((p.logprobs, p.max_tokens), (Some(2), Some(5)));
    }

    #[test]
    fn one_lambda_number_is_that_lambda_for_every_aligned_model() {
        let body = serde_json::json!({"model": "dera", "prompt": "a", "lambda": 0.25});
        let p = parse(body.to_string().as_bytes(), Endpoint::Completions, &info()).expect("valid");
        assert_eq!(p.mixture.lambdas(), &[0.25, 0.25]);
        // The limits hold for the whole vector: 2 x 6e5 puts 1 - sum past 1e6.
        let body = serde_json::json!({"model": "dera", "prompt": "a", "lambda": 6e5});
        let e = parse(body.to_string().as_bytes(), Endpoint::Completions, &info()).unwrap_err();
        assert!(e.message.contains("reference coefficient"), "{}", e.message);
    }

    #[test]
    fn every_bad_field_is_named() {
        let base = serde_json::json!({"model": "dera", "prompt": "a"});
        let cases: Vec<(&str, Value, &str, u16)> = vec![
            ("lambda", serde_json::json!(true), "lambda", 400),
            (
                "lambda",
                serde_json::json!([1]),
                "1 lambda value(s) given for 2",
                400,
            ),
            ("lambda", serde_json::json!([2e6, 0]), "lambda", 400),
            ("lambda", serde_json::json!([1, "x"]), "lambda[1]", 400),
            (
                "temperature",
                serde_json::json!(2.5),
                "between 0 and 2",
                400,
            ),
            ("top_p", serde_json::json!(0), "(0, 1]", 400),
            ("min_p", serde_json::json!(-0.1), "min_p", 400),
            (
                "presence_penalty",
                serde_json::json!(3),
                "presence_penalty",
                400,
            ),
            (
                "repetition_penalty",
                serde_json::json!(0),
                "repetition_penalty",
                400,
            ),
            ("n", serde_json::json!(9), "--max-batch", 400),
            ("n", serde_json::json!(-1), "`n`", 400),
            ("max_tokens", serde_json::json!(1.5), "max_tokens", 400),
            ("max_tokens", serde_json::json!(257), "context", 400),
            ("stop", serde_json::json!([1]), "stop", 400),
            ("stop", serde_json::json!("x".repeat(2000)), "stop", 400),
            ("stream", serde_json::json!("yes"), "stream", 400),
            (
                "stream_options",
                serde_json::json!(1),
                "stream_options",
                400,
            ),
            ("seed", serde_json::json!("1"), "seed", 400),
            (
                "prompt",
                serde_json::json!([[1, 2], [3, 99999]]),
                "prompt[1]",
                400,
            ),
            ("prompt", serde_json::json!([1, "a"]), "prompt", 400),
            ("prompt", serde_json::json!({"a": 1}), "prompt", 400),
            ("model", serde_json::json!(3), "model", 400),
            ("model", serde_json::json!("other"), "other", 404),
            ("best_of", serde_json::json!(3), "best_of", 400),
            ("logit_bias", serde_json::json!([1, 5]), "logit_bias", 400),
            (
                "logit_bias",
                serde_json::json!({"a": 5}),
                "logit_bias[\"a\"]",
                400,
            ),
            ("logit_bias", serde_json::json!({"-1": 5}), "token ids", 400),
            (
                "logit_bias",
                serde_json::json!({"99999": 5}),
                "vocabulary",
                400,
            ),
            (
                "logit_bias",
                serde_json::json!({"1": "5"}),
                "must be a number",
                400,
            ),
            (
                "logit_bias",
                serde_json::json!({"1": 100.5}),
                "between -100",
                400,
            ),
        ];
        for (field, value, needle, status) in cases {
            let mut body = base.clone();
            body[field] = value.clone();
            let e = parse_json(body, Endpoint::Completions).unwrap_err();
            assert_eq!(e.status().as_u16(), status, "{field} = {value}: {e:?}");
            assert!(
                e.message.contains(needle),
                "{field} = {value}: {}",
                e.message
            );
            let b = e.body();
            assert_eq!(b["error"]["message"], e.message.as_str());
            assert!(b["error"]["type"].is_string());
        }
        for (body, needle) in [
            ("", "not valid JSON"),
            (
                "{\"model\": \"dera\", \"prompt\": \"a\", \"lambda\": Infinity}",
                "not valid JSON",
            ),
            ("\"text\"", "JSON object"),
        ] {
            let e = parse(body.as_bytes(), Endpoint::Completions, &info()).unwrap_err();
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn sequences_per_request_are_bounded_by_the_batch() {
        let e = parse_json(
            serde_json::json!({"model": "dera", "prompt": ["a", "b", "c"], "n": 3}),
            Endpoint::Completions,
        )
        .unwrap_err();
        assert!(e.message.contains("9 sequences"), "{}", e.message);
    }
}
