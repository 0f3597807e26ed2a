//! End-to-end tests of `dera serve`: the real binary on an ephemeral loopback port, spoken to
//! over real HTTP/1.1 sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dera")
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models")
}

fn model_args() -> Vec<String> {
    let m = models();
    vec![
        "--ref".into(),
        m.join("reference").display().to_string(),
        "--aligned".into(),
        m.join("aligned-length").display().to_string(),
        "--aligned".into(),
        m.join("aligned-question").display().to_string(),
    ]
}

/// A running `dera serve`; killed when dropped.
struct Server {
    child: Child,
    client: Client,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Talks to a server on a port.
#[derive(Clone, Copy)]
struct Client {
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_with(model_args(), extra)
    }

    fn start_with(models: Vec<String>, extra: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .arg("serve")
            .args(models)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dera serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let port = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            client: Client { port },
        }
    }
}

impl Client {
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = http(self.port, "POST", path, body.to_string().as_bytes());
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
        (status, v)
    }

    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "{body} -> {v}");
        v
    }

    /// The `data:` payloads of a streamed request, which must end with `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let (status, text) = http(self.port, "POST", path, body.to_string().as_bytes());
        assert_eq!(status, 200, "{body} -> {text}");
        let data: Vec<&str> = text
            .split("\n\n")
            .filter_map(|ev| ev.trim().strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "stream of {body}: {text}");
        data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("chunk JSON"))
            .collect()
    }

    /// `body` answered whole, then streamed (with the usage chunk): the response and chunks.
    fn whole_and_streamed(&self, path: &str, body: &Value) -> (Value, Vec<Value>) {
        let whole = self.ok(path, body);
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        (whole, self.stream(path, &streamed))
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let (status, text) = http(self.port, "GET", "/metrics", b"");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_prefix} in\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; the status and the (de-chunked) body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write head");
    // A body over the limit may be refused before it is read: the rest may not be written.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().expect("text").to_string()
}

/// `dera generate --greedy --format json` over a prompts file: (text, tokens) per line.
fn generate(lines: &[(String, Vec<f64>)], max_new: usize) -> Vec<(String, usize)> {
    let lines: Vec<(String, Value)> = lines.iter().map(|(p, l)| (p.clone(), json!(l))).collect();
    generate_with("1,1", &lines, max_new)
}

/// The standard output of `dera generate --greedy --format json --lambda LAMBDA
/// --max-new-tokens N` on the embedded models with `args`, which must succeed.
fn greedy_json(lambda: &str, max_new: usize, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("generate")
        .args(model_args())
        .args(["--lambda", lambda, "--greedy", "--format", "json"])
        .args(["--max-new-tokens", &max_new.to_string()])
        .args(args)
        .output()
        .expect("run dera generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dera generate --greedy --lambda LAMBDA` over a prompts file of `(prompt, lambda)` lines
/// (`null`: the command line's lambda).
fn generate_with(lambda: &str, lines: &[(String, Value)], max_new: usize) -> Vec<(String, usize)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prompts.jsonl");
    let body: String = lines
        .iter()
        .map(|(p, l)| match l {
            Value::Null => format!("{}\n", json!({ "prompt": p })),
            l => format!("{}\n", json!({"prompt": p, "lambda": l})),
        })
        .collect();
    std::fs::write(&file, body).expect("write prompts");
    let file = file.display().to_string();
    greedy_json(lambda, max_new, &["--prompts", &file])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("generate JSON");
            (
                v["text"].as_str().expect("text").to_string(),
                v["tokens"].as_array().expect("tokens").len(),
            )
        })
        .collect()
}

fn cases() -> Vec<(String, Vec<f64>)> {
    [
        ("What is", vec![0.0, 0.0]),
        ("What is", vec![1.0, 0.0]),
        ("What is", vec![0.5, 1.5]),
        ("Once upon a time", vec![2.0, -0.5]),
        ("Once upon a time", vec![0.0, 1.0]),
        ("The", vec![1.0, 1.0]),
        // Continues "What is" (its rest runs from the kept rows).
        ("What is the answer", vec![1.0, 0.5]),
    ]
    .into_iter()
    .map(|(p, l)| (p.to_string(), l))
    .collect()
}

#[test]
fn concurrent_lambdas_equal_single_requests_and_dera_generate() {
    // One batch, and three batches side by side (`--shards`): the same tokens; the cases
    // repeat prompts at other lambdas, so later requests join kept prompt rows, and with
    // nothing kept (`--prompt-cache-mb 0`) every prompt runs: the same tokens again.
    for shards in ["1", "3"] {
        concurrent_equal_single(&["--max-batch", "8", "--shards", shards]);
    }
    concurrent_equal_single(&["--max-batch", "8", "--prompt-cache-mb", "0"]);
}

fn concurrent_equal_single(args: &[&str]) {
    let max_new = 24;
    let server = Server::start(args);
    let body = |(p, l): &(String, Vec<f64>)| json!({"model": "dera", "prompt": p, "lambda": l, "temperature": 0, "max_tokens": max_new});
    let cases = cases();
    let single: Vec<Value> = cases
        .iter()
        .map(|c| server.ok("/v1/completions", &body(c)))
        .collect();

    // All at once, half of them streamed: each equals its single-request output.
    let port = server.port;
    let handles: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut b = body(c);
            let stream = i % 2 == 1;
            b["stream"] = json!(stream);
            std::thread::spawn(move || {
                let s = Client { port };
                if stream {
                    let chunks = s.stream("/v1/completions", &b);
                    chunks
                        .iter()
                        .map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string())
                        .collect::<String>()
                } else {
                    text_of(&s.ok("/v1/completions", &b))
                }
            })
        })
        .collect();
    let concurrent: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let reference = generate(&cases, max_new);
    for (((c, one), many), (gen_text, gen_tokens)) in
        cases.iter().zip(&single).zip(&concurrent).zip(&reference)
    {
        assert_eq!(
            &text_of(one),
            many,
            "{args:?} {c:?}: concurrent differs from single"
        );
        assert_eq!(
            &text_of(one),
            gen_text,
            "{args:?} {c:?}: differs from dera generate"
        );
        assert_eq!(
            one["usage"]["completion_tokens"].as_u64(),
            Some(*gen_tokens as u64),
            "{c:?}"
        );
        assert_eq!(one["lambda"], json!(c.1));
    }
    // Different lambdas give different texts (the lambda reaches the engine).
    assert_ne!(text_of(&single[0]), text_of(&single[2]));
    assert!(server.metric("dera_sequences_total{reason=\"cancelled\"}") == 0.0);
    // The single requests repeat prompts: kept rows were joined, unless nothing is kept.
    let (hits, kept) = (
        server.metric("dera_prompt_cache_hits_total "),
        server.metric("dera_prompt_cache_bytes "),
    );
    let continued = server.metric("dera_prompt_cache_prefix_hits_total ");
    if args.contains(&"--prompt-cache-mb") {
        assert_eq!((hits, kept, continued), (0.0, 0.0, 0.0), "{args:?}");
    } else {
        assert!(
            hits > 0.0 && kept > 0.0,
            "{args:?}: {hits} hits, {kept} bytes"
        );
        assert!(continued > 0.0, "{args:?}: no prompt continued a kept one");
    }
}

/// Opens a streamed request and returns the reader positioned after the headers.
fn open_stream(port: u16, path: &str, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
    }
    r
}

/// The next `data:` payload of an open stream (chunk-size lines and blanks skipped).
fn next_data(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            return Some(d.to_string());
        }
    }
}

#[test]
fn requests_join_a_running_batch() {
    let server = Server::start(&["--max-batch", "8"]);
    let short = json!({"model": "dera", "prompt": "The", "lambda": [0.5, 0.5], "temperature": 0, "max_tokens": 6});
    let alone = text_of(&server.ok("/v1/completions", &short));
    let long = json!({"model": "dera", "prompt": "Once upon a time", "lambda": [1.0, 1.0],
        "temperature": 0, "max_tokens": 200, "stream": true});
    let mut r = open_stream(server.port, "/v1/completions", &long);
    next_data(&mut r).expect("first chunk");
    // The long request is decoding: the short one joins it and finishes first.
    let joined = text_of(&server.ok("/v1/completions", &short));
    assert_eq!(joined, alone);
    let mut rest = 0;
    let mut done = false;
    while let Some(d) = next_data(&mut r) {
        if d == "[DONE]" {
            done = true;
            break;
        }
        rest += 1;
    }
    assert!(done);
    assert!(
        rest > 20,
        "the long request was still decoding ({rest} chunks after the short one started)"
    );
    // Some step decoded both: more sequences than steps.
    let sum = server.metric("dera_step_batch_size_sum ");
    let count = server.metric("dera_step_batch_size_count ");
    assert!(sum > count, "batch sizes: sum {sum}, steps {count}");
}

#[test]
fn streaming_equals_non_streaming() {
    let server = Server::start(&[]);
    let base = json!({"model": "dera", "prompt": "What is", "lambda": [0.5, 1.5], "temperature": 0, "max_tokens": 24});
    let full = text_of(&server.ok("/v1/completions", &base));
    // A stop string from the middle of the greedy text.
    let mid = full
        .char_indices()
        .nth(full.chars().count() / 2)
        .map_or(0, |(i, _)| i);
    let stop: String = full[mid..].chars().take(3).collect();
    let cut = full.find(stop.as_str()).expect("stop in text");
    let mut requests = vec![
        (
            "/v1/completions",
            json!({"model": "dera", "prompt": ["What is", "The"], "n": 2, "temperature": 0.9,
                "top_p": 0.95, "seed": 7, "max_tokens": 20, "lambda": [1.5, 0.5]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "dera", "messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is a cat?"}], "temperature": 0, "max_tokens": 16,
                "lambda": [0.0, 2.0]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "dera", "messages": [{"role": "user", "content": "hello"}], "n": 3,
                "temperature": 1.2, "seed": 3, "max_tokens": 12}),
        ),
    ];
    let mut stopped = base.clone();
    stopped["stop"] = json!([stop, "\u{1F600}"]);
    requests.push(("/v1/completions", stopped));
    for (path, body) in requests {
        let (whole, chunks) = server.whole_and_streamed(path, &body);
        let choices = whole["choices"].as_array().expect("choices");
        let chat = path.contains("chat");
        for c in choices {
            let i = c["index"].as_u64().expect("index");
            let mine = chunks
                .iter()
                .flat_map(|ch| ch["choices"].as_array().cloned().unwrap_or_default())
                .filter(|ch| ch["index"].as_u64() == Some(i));
            let mut text = String::new();
            let mut finish = Value::Null;
            for ch in mine {
                let piece = if chat {
                    &ch["delta"]["content"]
                } else {
                    &ch["text"]
                };
                text.push_str(piece.as_str().unwrap_or(""));
                if !ch["finish_reason"].is_null() {
                    finish = ch["finish_reason"].clone();
                }
            }
            let expected = if chat {
                &c["message"]["content"]
            } else {
                &c["text"]
            };
            assert_eq!(
                Some(text.as_str()),
                expected.as_str(),
                "{path} {body} choice {i}"
            );
            assert_eq!(finish, c["finish_reason"], "{path} {body} choice {i}");
        }
        let usage = chunks.last().expect("usage chunk");
        assert_eq!(usage["usage"], whole["usage"], "{path} {body}");
        if let Some(n) = body["n"].as_u64() {
            let prompts = body["prompt"].as_array().map_or(1, Vec::len) as u64;
            assert_eq!(choices.len() as u64, n * prompts);
        }
    }
    let cut_text = text_of(&server.ok("/v1/completions", &{
        let mut b = base.clone();
        b["stop"] = json!(stop);
        b
    }));
    assert_eq!(cut_text, full[..cut]);
    // Seeded sampling is reproducible and the seed matters.
    let sampled = |seed: u64| {
        text_of(&server.ok(
            "/v1/completions",
            &json!({"model": "dera", "prompt": "The", "temperature": 1.0, "seed": seed, "max_tokens": 16}),
        ))
    };
    assert_eq!(sampled(11), sampled(11));
    assert!((12..20).any(|s| sampled(s) != sampled(11)));
}

/// With `--stream-interval-ms`, a stream's chunks go at least that far apart: the text of the
/// tokens decoded meanwhile goes as one chunk, the same text as without; log-probabilities
/// still come one token per chunk. (Half a second: several steps of a debug build under a
/// loaded test run fit in it, so some chunks carry several tokens.)
#[test]
fn a_stream_interval_sends_fewer_chunks_with_the_same_text() {
    let server = Server::start(&["--stream-interval-ms", "500"]);
    let cases = [
        (
            "/v1/completions",
            json!({"model": "dera", "prompt": "What is", "lambda": [0.5, 1.5], "temperature": 0, "max_tokens": 40}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "dera", "messages": [{"role": "user", "content": "hello"}], "n": 2,
                "temperature": 1.1, "seed": 5, "max_tokens": 40}),
        ),
    ];
    for (path, body) in cases {
        let (whole, chunks) = server.whole_and_streamed(path, &body);
        let chat = path.contains("chat");
        let mut texts = vec![String::new(); whole["choices"].as_array().map_or(0, Vec::len)];
        let mut pieces = 0;
        for ch in &chunks {
            for c in ch["choices"].as_array().cloned().unwrap_or_default() {
                let piece = if chat {
                    &c["delta"]["content"]
                } else {
                    &c["text"]
                };
                let piece = piece.as_str().unwrap_or("");
                if !piece.is_empty() {
                    pieces += 1;
                }
                let i = c["index"].as_u64().expect("index") as usize;
                texts[i].push_str(piece);
            }
        }
        for (i, c) in whole["choices"]
            .as_array()
            .expect("choices")
            .iter()
            .enumerate()
        {
            let expected = if chat {
                &c["message"]["content"]
            } else {
                &c["text"]
            };
            assert_eq!(
                Some(texts[i].as_str()),
                expected.as_str(),
                "{path} choice {i}"
            );
        }
        let tokens = whole["usage"]["completion_tokens"].as_u64().expect("usage");
        assert!(tokens >= 10, "{path}: only {tokens} tokens");
        assert!(
            (pieces as u64) < tokens,
            "{path}: {pieces} text chunks for {tokens} tokens"
        );
    }
    let mut with_logprobs = json!({"model": "dera", "prompt": "What is", "temperature": 0,
        "max_tokens": 12, "logprobs": 1, "stream": true});
    let chunks = server.stream("/v1/completions", &with_logprobs);
    with_logprobs["stream"] = json!(false);
    let whole = server.ok("/v1/completions", &with_logprobs);
    let per_chunk: usize = chunks
        .iter()
        .filter_map(|ch| ch["choices"][0]["logprobs"]["tokens"].as_array())
        .map(|t| {
            assert_eq!(t.len(), 1, "one token per chunk with log-probabilities");
            t.len()
        })
        .sum();
    assert_eq!(
        per_chunk as u64,
        whole["usage"]["completion_tokens"].as_u64().expect("usage")
    );
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-body-bytes", "4096"]);
    let long_ids: Vec<u32> = (0..300).map(|i| 5 + i % 100).collect();
    let ok = json!({"model": "dera", "prompt": "The", "temperature": 0, "max_tokens": 4});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid JSON",
            b"{\"model\": \"dera\", ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "NaN lambda",
            br#"{"model":"dera","prompt":"a","lambda":NaN}"#.to_vec(),
            400,
            "not valid JSON",
        ),
        ("body not an object", b"[1, 2]".to_vec(), 400, "JSON object"),
        (
            "missing model",
            json!({"prompt": "a"}).to_string().into_bytes(),
            400,
            "model",
        ),
        (
            "missing prompt",
            json!({"model": "dera"}).to_string().into_bytes(),
            400,
            "prompt",
        ),
        (
            "lambda a string",
            with("lambda", json!("strong")).to_string().into_bytes(),
            400,
            "lambda",
        ),
        (
            "lambda list of strings",
            with("lambda", json!(["a", 1])).to_string().into_bytes(),
            400,
            "lambda[0]",
        ),
        (
            "wrong lambda count",
            with("lambda", json!([0.5])).to_string().into_bytes(),
            400,
            "2 aligned",
        ),
        (
            "lambda overflow",
            with("lambda", json!([1e300, 0])).to_string().into_bytes(),
            400,
            "lambda",
        ),
        (
            "lambda past f64",
            br#"{"model":"dera","prompt":"a","lambda":[1e400,0]}"#.to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "temperature negative",
            with("temperature", json!(-1)).to_string().into_bytes(),
            400,
            "temperature",
        ),
        (
            "temperature too high",
            with("temperature", json!(5)).to_string().into_bytes(),
            400,
            "temperature",
        ),
        (
            "temperature a string",
            with("temperature", json!("hot")).to_string().into_bytes(),
            400,
            "temperature",
        ),
        (
            "top_p zero",
            with("top_p", json!(0)).to_string().into_bytes(),
            400,
            "top_p",
        ),
        (
            "top_p above one",
            with("top_p", json!(1.5)).to_string().into_bytes(),
            400,
            "top_p",
        ),
        (
            "n zero",
            with("n", json!(0)).to_string().into_bytes(),
            400,
            "`n`",
        ),
        (
            "max_tokens zero",
            with("max_tokens", json!(0)).to_string().into_bytes(),
            400,
            "max_tokens",
        ),
        (
            "max_tokens negative",
            with("max_tokens", json!(-3)).to_string().into_bytes(),
            400,
            "max_tokens",
        ),
        (
            "max_tokens over the context",
            with("max_tokens", json!(100_000)).to_string().into_bytes(),
            400,
            "context",
        ),
        (
            "logprobs too many",
            with("logprobs", json!(99)).to_string().into_bytes(),
            400,
            "logprobs",
        ),
        (
            "seed a float",
            with("seed", json!(1.5)).to_string().into_bytes(),
            400,
            "seed",
        ),
        (
            "five stop strings",
            with("stop", json!(["a", "b", "c", "d", "e"]))
                .to_string()
                .into_bytes(),
            400,
            "stop",
        ),
        (
            "empty stop string",
            with("stop", json!("")).to_string().into_bytes(),
            400,
            "stop",
        ),
        (
            "prompt longer than the context",
            with("prompt", json!(long_ids)).to_string().into_bytes(),
            400,
            "context",
        ),
        (
            "prompt plus max_tokens over the context",
            with("max_tokens", json!(255)).to_string().into_bytes(),
            400,
            "context",
        ),
        (
            "token id out of vocabulary",
            with("prompt", json!([1, 2, 999_999]))
                .to_string()
                .into_bytes(),
            400,
            "token id",
        ),
        (
            "empty prompt list",
            with("prompt", json!([])).to_string().into_bytes(),
            400,
            "empty",
        ),
        (
            "max_tokens 0 without echo",
            with("max_tokens", json!(0)).to_string().into_bytes(),
            400,
            "only with `echo`",
        ),
        (
            "unknown model",
            with("model", json!("gpt-4")).to_string().into_bytes(),
            404,
            "gpt-4",
        ),
        (
            "body over the limit",
            with("prompt", json!("x".repeat(10_000)))
                .to_string()
                .into_bytes(),
            413,
            "limit",
        ),
    ];
    for (what, body, status, needle) in &cases {
        let (got, text) = http(server.port, "POST", "/v1/completions", body);
        assert_eq!(got, *status, "{what}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {text}: {e}"));
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(v["error"]["type"].is_string(), "{what}: {v}");
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }
    let chat_cases = [
        (json!({"model": "dera"}), "messages"),
        (json!({"model": "dera", "messages": []}), "empty"),
        (
            json!({"model": "dera", "messages": [{"role": "wizard", "content": "hi"}]}),
            "role",
        ),
        (
            json!({"model": "dera", "messages": [{"role": "user", "content": 5}]}),
            "content",
        ),
        (
            json!({"model": "dera", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}),
            "logprobs",
        ),
    ];
    for (body, needle) in chat_cases {
        let (status, v) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (status, text) = http(server.port, "GET", "/v1/nothing", b"");
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("\"error\""));
    let (status, _) = http(server.port, "GET", "/v1/completions", b"");
    assert_eq!(status, 405);
    // Still serving, and every refusal is counted.
    assert!(!text_of(&server.ok("/v1/completions", &ok)).is_empty());
    assert!(
        server.metric("dera_requests_total{route=\"/v1/completions\",status=\"400\"} ") >= 28.0
    );
    assert_eq!(
        server.metric("dera_requests_total{route=\"/v1/completions\",status=\"413\"} "),
        1.0
    );
}

#[test]
fn a_full_queue_answers_429() {
    let server = Server::start(&["--max-batch", "1", "--max-queue", "1"]);
    let long = json!({"model": "dera", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 200,
        "stream": true});
    let mut running = open_stream(server.port, "/v1/completions", &long);
    next_data(&mut running).expect("first chunk");
    // The batch (one sequence) is busy: the next request waits, the one after is refused.
    let waiting = open_stream(server.port, "/v1/completions", &long);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("dera_queue_depth ") < 1.0 {
        assert!(Instant::now() < deadline, "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, v) = server.post("/v1/completions", &json!({"model": "dera", "prompt": "a"}));
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("queue")
    );
    drop(waiting);
    drop(running);
}

/// One lambda value, on the command line or in a request, is that lambda for every aligned
/// model: the same text and response as the list, and as `dera generate --lambda` with one value.
#[test]
fn one_lambda_is_the_same_for_every_aligned_model() {
    let server = Server::start(&["--lambda", "0.7"]);
    let body = |lambda: Value| json!({"model": "dera", "prompt": "What is", "temperature": 0, "max_tokens": 12, "lambda": lambda});
    let default = server.ok(
        "/v1/completions",
        &json!({"model": "dera", "prompt": "What is", "temperature": 0, "max_tokens": 12}),
    );
    assert_eq!(default["lambda"], json!([0.7, 0.7]));
    let listed = server.ok("/v1/completions", &body(json!([0.7, 0.7])));
    assert_eq!(text_of(&default), text_of(&listed));
    let one = server.ok("/v1/completions", &body(json!(1.5)));
    assert_eq!(one["lambda"], json!([1.5, 1.5]));
    let both = server.ok("/v1/completions", &body(json!([1.5, 1.5])));
    assert_eq!(text_of(&one), text_of(&both));
    assert_ne!(
        text_of(&one),
        text_of(&default),
        "the lambda reaches the engine"
    );
    // `--lambda 1.5`, and a prompts-file line's `"lambda": 1.5` over `--lambda 0.2`.
    for (cli, line) in [("1.5", Value::Null), ("0.2", json!(1.5))] {
        let got = generate_with(cli, &[("What is".into(), line)], 12);
        assert_eq!(got[0].0, text_of(&one), "--lambda {cli}");
    }
    // A list must still name every aligned model.
    let (status, v) = server.post("/v1/completions", &body(json!([1.5])));
    assert_eq!(status, 400, "{v}");
}

#[test]
fn a_model_without_chat_template_refuses_chat_with_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = models().join("reference");
    for f in std::fs::read_dir(&src).expect("read reference") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, dir.path().join(f.file_name().expect("name"))).expect("copy");
    }
    let cfg_path = dir.path().join("tokenizer_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");
    cfg.as_object_mut().expect("object").remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let m = models();
    let server = Server::start_with(
        vec![
            "--ref".into(),
            dir.path().display().to_string(),
            "--aligned".into(),
            m.join("aligned-length").display().to_string(),
        ],
        &["--lambda", "0.5"],
    );
    let (status, v) = server.post(
        "/v1/chat/completions",
        &json!({"model": "dera", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("chat_template")
    );
    // Completions still work, with the server's default lambda.
    let v = server.ok(
        "/v1/completions",
        &json!({"model": "dera", "prompt": "The", "max_tokens": 3}),
    );
    assert_eq!(v["lambda"], json!([0.5]));
}

#[test]
fn a_client_disconnecting_mid_stream_cancels_its_sequence() {
    let server = Server::start(&[]);
    let body = json!({"model": "dera", "prompt": "Once upon a time", "temperature": 0,
        "max_tokens": 200, "stream": true});
    let mut r = open_stream(server.port, "/v1/completions", &body);
    next_data(&mut r).expect("chunk");
    next_data(&mut r).expect("chunk");
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("dera_sequences_total{reason=\"cancelled\"} ") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the sequence was never cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.metric("dera_completion_tokens_total ") < 200.0);
    assert_eq!(server.metric("dera_batch_size "), 0.0);
    // A client that leaves before a non-streamed answer is cancelled too.
    let mut body = body;
    body["stream"] = json!(false);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    let text = body.to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
    .expect("write");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("dera_batch_size ") < 1.0 {
        assert!(Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    while server.metric("dera_sequences_total{reason=\"cancelled\"} ") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the non-streamed request was never cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.metric("dera_completion_tokens_total ") < 400.0);
    let v = server.ok(
        "/v1/completions",
        &json!({"model": "dera", "prompt": "The", "max_tokens": 3}),
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut server = Server::start(&[]);
    let port = server.port;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let body = json!({"model": "dera", "prompt": "Once upon a time", "temperature": 0,
            "max_tokens": 120, "stream": true,
            "stream_options": {"include_usage": true}});
        let mut r = open_stream(port, "/v1/completions", &body);
        let first = next_data(&mut r).expect("first chunk");
        started_tx.send(()).expect("signal");
        let mut last = vec![first];
        while let Some(d) = next_data(&mut r) {
            last.push(d);
        }
        last
    });
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("stream started");
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let events = client.join().expect("client");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 120, "{usage}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "dera serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn logprobs_and_kl_to_reference() {
    let server = Server::start(&[]);
    let v = server.ok(
        "/v1/completions",
        &json!({"model": "dera", "prompt": "What is", "temperature": 0, "max_tokens": 10,
            "logprobs": 3, "lambda": [0.5, 1.5], "kl_to_reference": true}),
    );
    let c = &v["choices"][0];
    let lp = &c["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().expect("tokens") as usize;
    let tokens = lp["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), n);
    let joined: String = tokens.iter().map(|t| t.as_str().expect("token")).collect();
    assert_eq!(joined, c["text"].as_str().expect("text"));
    for (i, (chosen, top)) in lp["token_logprobs"]
        .as_array()
        .expect("token_logprobs")
        .iter()
        .zip(lp["top_logprobs"].as_array().expect("top_logprobs"))
        .enumerate()
    {
        let chosen = chosen.as_f64().expect("logprob");
        let top = top.as_object().expect("top map");
        assert!(!top.is_empty() && top.len() <= 3, "{top:?}");
        let best = top
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::NEG_INFINITY, f64::max);
        // Greedy picks the most likely token of the mixed distribution.
        assert!(
            chosen <= 0.0 && (chosen - best).abs() < 1e-5,
            "token {i}: {chosen} vs {best}"
        );
    }
    let kl = c["kl_to_reference"].as_array().expect("kl");
    assert_eq!(kl.len(), n);
    assert!(kl.iter().all(|k| k.as_f64().is_some_and(|k| k >= 0.0)));
    assert!(
        kl.iter().any(|k| k.as_f64().is_some_and(|k| k > 1e-3)),
        "{kl:?}"
    );
    // At lambda 0 the mixture is the reference: KL 0 everywhere.
    let v = server.ok(
        "/v1/completions",
        &json!({"model": "dera", "prompt": "What is", "temperature": 0, "max_tokens": 5,
            "lambda": [0, 0], "kl_to_reference": true}),
    );
    for k in v["choices"][0]["kl_to_reference"].as_array().expect("kl") {
        assert!(k.as_f64().expect("kl").abs() < 1e-6, "{k}");
    }
    let v = server.ok(
        "/v1/chat/completions",
        &json!({"model": "dera", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
            "max_tokens": 6, "logprobs": true, "top_logprobs": 2}),
    );
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().expect("n")
    );
    for e in content {
        assert!(e["token"].is_string() && e["logprob"].as_f64().is_some() && e["bytes"].is_array());
        assert_eq!(e["top_logprobs"].as_array().expect("top").len(), 2);
    }
}

/// `dera generate --format json` greedy at lambda 1 with extra flags: (text, token ids).
fn generate_flags(prompt: &str, max_new: usize, extra: &[&str]) -> (String, Vec<u64>) {
    let args: Vec<&str> = ["--prompt", prompt]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let out = greedy_json("1", max_new, &args);
    let v: Value = serde_json::from_str(&out).expect("generate JSON");
    let ids = v["tokens"].as_array().expect("tokens");
    (
        v["text"].as_str().expect("text").to_string(),
        ids.iter().map(|t| t.as_u64().expect("id")).collect(),
    )
}

#[test]
fn logit_bias_shifts_the_mixed_logits_as_dera_generate_does() {
    let server = Server::start(&["--lambda", "1"]);
    let body = |bias: Value| json!({"model": "dera", "prompt": "What is", "temperature": 0, "max_tokens": 8, "logit_bias": bias});
    let (plain, ids) = generate_flags("What is", 8, &[]);
    assert_eq!(
        text_of(&server.ok("/v1/completions", &body(json!({})))),
        plain
    );
    // Banning the first greedy token changes the text, exactly as the CLI's flag does.
    let first = ids[0];
    let banned = text_of(&server.ok("/v1/completions", &body(json!({ first.to_string(): -100 }))));
    let (cli, cli_ids) = generate_flags("What is", 8, &["--logit-bias", &format!("{first}=-100")]);
    assert_eq!(banned, cli);
    assert_ne!(banned, plain, "the bias reaches the sampler");
    assert!(!cli_ids.contains(&first), "{cli_ids:?} still holds {first}");
    // +100 forces a token at every step, in chat as well.
    let (forced, forced_ids) = generate_flags("What is", 8, &["--logit-bias", "5=100"]);
    assert_eq!(forced_ids, vec![5; 8]);
    assert_eq!(
        text_of(&server.ok("/v1/completions", &body(json!({"5": 100})))),
        forced
    );
    let chat = server.ok(
        "/v1/chat/completions",
        &json!({"model": "dera", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                "max_tokens": 4, "logit_bias": {"5": 100}}),
    );
    let (four, _) = generate_flags("What is", 4, &["--logit-bias", "5=100"]);
    assert_eq!(chat["choices"][0]["message"]["content"], json!(four));
    // Out of range: a 400 naming the entry.
    let (status, v) = server.post("/v1/completions", &body(json!({"5": 101})));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("logit_bias[\"5\"]"),
        "{v}"
    );
}

#[test]
fn echo_returns_the_prompt_and_scores_its_tokens() {
    let server = Server::start(&["--lambda", "1.5"]);
    let body = |extra: Value| {
        let mut b = json!({"model": "dera", "prompt": "What is the", "temperature": 0});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let plain = server.ok(
        "/v1/completions",
        &body(json!({"max_tokens": 4, "logprobs": 2})),
    );
    let echoed = server.ok(
        "/v1/completions",
        &body(json!({"max_tokens": 4, "logprobs": 2, "echo": true})),
    );
    let scored = server.ok(
        "/v1/completions",
        &body(json!({"max_tokens": 0, "logprobs": 2, "echo": true})),
    );
    // The text is the prompt, then what the request without echo generated.
    assert_eq!(text_of(&echoed), format!("What is the{}", text_of(&plain)));
    assert_eq!(text_of(&scored), "What is the");
    assert_eq!(scored["choices"][0]["finish_reason"], "length");
    let prompt_tokens = scored["usage"]["prompt_tokens"].as_u64().expect("usage") as usize;
    assert_eq!(scored["usage"]["completion_tokens"], 0);
    let lp = |v: &Value, key: &str| {
        v["choices"][0]["logprobs"][key]
            .as_array()
            .expect(key)
            .clone()
    };
    // One entry per prompt token (the first has no log-probability), then the generated ones.
    let (s_lp, e_lp, p_lp) = (
        lp(&scored, "token_logprobs"),
        lp(&echoed, "token_logprobs"),
        lp(&plain, "token_logprobs"),
    );
    assert_eq!(s_lp.len(), prompt_tokens);
    assert!(s_lp[0].is_null() && lp(&scored, "top_logprobs")[0].is_null());
    assert!(
        s_lp[1..]
            .iter()
            .all(|x| x.as_f64().is_some_and(|x| x <= 0.0))
    );
    assert_eq!(e_lp.len(), prompt_tokens + 4);
    assert_eq!(e_lp[..prompt_tokens], s_lp[..]);
    assert_eq!(e_lp[prompt_tokens..], p_lp[..]);
    assert_eq!(
        lp(&echoed, "top_logprobs")[prompt_tokens..],
        lp(&plain, "top_logprobs")[..]
    );
    // Offsets index the returned text: the generated tokens start where the echo ends.
    let offsets = lp(&echoed, "text_offset");
    let tokens = lp(&echoed, "tokens");
    let text = text_of(&echoed);
    for (o, t) in offsets[prompt_tokens..]
        .iter()
        .zip(&tokens[prompt_tokens..])
    {
        let o = o.as_u64().expect("offset") as usize;
        assert_eq!(
            &text[o..o + t.as_str().expect("token").len()],
            t.as_str().expect("token")
        );
    }
    assert_eq!(
        offsets[prompt_tokens].as_u64(),
        Some("What is the".len() as u64)
    );
    // Token-id prompts (as evaluation harnesses send them) come back decoded, one choice each.
    let ids = server.ok(
        "/v1/completions",
        &json!({"model": "dera", "prompt": [[40, 478, 79], [40, 478]], "max_tokens": 0,
                "echo": true, "logprobs": 1}),
    );
    let (a, b) = (&ids["choices"][0], &ids["choices"][1]);
    assert!(
        a["text"]
            .as_str()
            .expect("text")
            .starts_with(b["text"].as_str().expect("text"))
    );
    assert_eq!(
        a["logprobs"]["token_logprobs"][1],
        b["logprobs"]["token_logprobs"][1]
    );
    assert_eq!(ids["usage"]["prompt_tokens"], 5);
    // Streamed: the first chunk of the choice is the prompt (with its log-probabilities), the
    // rest as the stream without echo; with max_tokens 0, the prompt and the end.
    for (max, whole) in [(4, &echoed), (0, &scored)] {
        let events = server.stream(
            "/v1/completions",
            &body(
                json!({"max_tokens": max, "logprobs": 2, "echo": true, "stream": true,
                         "stream_options": {"include_usage": true}}),
            ),
        );
        let chunks: Vec<&Value> = events
            .iter()
            .filter(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty()))
            .collect();
        assert_eq!(
            chunks[0]["choices"][0]["text"], "What is the",
            "max_tokens {max}"
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, text_of(whole), "max_tokens {max}");
        for key in ["token_logprobs", "text_offset", "tokens"] {
            let streamed: Vec<Value> = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["logprobs"][key].as_array())
                .flatten()
                .cloned()
                .collect();
            assert_eq!(streamed, lp(whole, key), "max_tokens {max}: {key}");
        }
        let last = events.last().expect("usage chunk");
        assert_eq!(last["usage"], whole["usage"], "max_tokens {max}");
    }
    // What echo does not do: chat, and max_tokens 0 without it.
    for (path, bad) in [
        ("/v1/completions", body(json!({"max_tokens": 0}))),
        (
            "/v1/chat/completions",
            json!({"model": "dera", "messages": [{"role": "user", "content": "hi"}], "echo": true}),
        ),
    ] {
        let (status, v) = server.post(path, &bad);
        assert_eq!(status, 400, "{bad}: {v}");
    }
}
