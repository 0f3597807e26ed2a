//! Property tests of the request parser: bodies built from the fields clients send, each with
//! a well-formed value or any other JSON, never panic, and every body accepted holds only
//! values the engine can run (the limits of `dera_serve::api`); every refusal is a 4xx with an
//! OpenAI error body.

use dera_serve::api::{
    Endpoint, MAX_BIAS, MAX_LOGIT_BIAS, MAX_N, MAX_STOP, MAX_STOP_BYTES, MAX_TOP_LOGPROBS,
    PromptInput, ServeInfo, parse,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn info() -> ServeInfo {
    ServeInfo {
        model_ids: vec!["dera".into(), "reference".into()],
        num_aligned: 2,
        default_lambda: vec![1.0, 1.0],
        context: 64,
        vocab: 100,
        max_batch: 8,
    }
}

/// Any JSON value, small and nested a little, with numbers at the edges of f64 and u64.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1e308),
            Just(-1e308),
            Just(5e-324),
            Just(0.5),
            Just(2.5),
            -1e7f64..1e7
        ]
        .prop_map(Value::from),
        "[a-z0-9 \"\\\\]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z0-9]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value clients send for `field` (mostly in range, sometimes just outside).
fn plausible(field: &'static str) -> BoxedStrategy<Value> {
    match field {
        "model" => prop_oneof![
            Just(json!("dera")),
            Just(json!("reference")),
            Just(json!("gpt-4"))
        ]
        .boxed(),
        "prompt" => prop_oneof![
            "[a-z ]{0,12}".prop_map(Value::from),
            prop::collection::vec("[a-z ]{0,6}", 0..4).prop_map(Value::from),
            prop::collection::vec(0u32..120, 0..6).prop_map(Value::from),
            prop::collection::vec(prop::collection::vec(0u32..120, 0..4), 0..3)
                .prop_map(Value::from),
        ]
        .boxed(),
        "messages" => prop::collection::vec(
            (
                prop_oneof![
                    Just("user"),
                    Just("system"),
                    Just("assistant"),
                    Just("robot")
                ],
                "[a-z ]{0,8}",
            )
                .prop_map(|(r, c)| json!({"role": r, "content": c})),
            0..3,
        )
        .prop_map(Value::from)
        .boxed(),
        "max_tokens" | "max_completion_tokens" => (0u64..80).prop_map(Value::from).boxed(),
        "temperature" => (-0.5f64..2.5).prop_map(Value::from).boxed(),
        "top_p" => (-0.2f64..1.2).prop_map(Value::from).boxed(),
        "top_k" => (-2i64..50).prop_map(Value::from).boxed(),
        "min_p" => (-0.2f64..1.2).prop_map(Value::from).boxed(),
        "n" => (0u64..10).prop_map(Value::from).boxed(),
        "seed" => any::<i64>().prop_map(Value::from).boxed(),
        "stop" => prop_oneof![
            "[a-z]{0,4}".prop_map(Value::from),
            prop::collection::vec("[a-z]{0,3}", 0..6).prop_map(Value::from),
        ]
        .boxed(),
        "stream" | "kl_to_reference" | "echo" => any::<bool>().prop_map(Value::from).boxed(),
        "logprobs" => prop_oneof![
            (0u64..25).prop_map(Value::from),
            any::<bool>().prop_map(Value::from)
        ]
        .boxed(),
        "top_logprobs" => (0u64..25).prop_map(Value::from).boxed(),
        "lambda" => prop_oneof![
            (-3.0f64..3.0).prop_map(Value::from),
            prop::collection::vec(-3.0f64..3.0, 0..4).prop_map(Value::from),
            Just(json!([1e6, -1e6])),
            Just(json!(2e6)),
        ]
        .boxed(),
        "logit_bias" => prop::collection::btree_map(
            prop_oneof![
                4 => (0u32..100).prop_map(|t| t.to_string()),
                1 => "[0-9]{3}|-?[0-9a]{1,2}"
            ],
            -130.0f64..130.0,
            0..3,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, json!(v))).collect()))
        .boxed(),
        "presence_penalty" | "frequency_penalty" => (-3.0f64..3.0).prop_map(Value::from).boxed(),
        "repetition_penalty" => (-1.0f64..3.0).prop_map(Value::from).boxed(),
        "stream_options" => any::<bool>()
            .prop_map(|b| json!({"include_usage": b}))
            .boxed(),
        _ => any_json().boxed(),
    }
}

const FIELDS: [&str; 27] = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "lambda",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "kl_to_reference",
    "echo",
    "best_of",
    "suffix",
    "tools",
    "user",
];

/// A value in range for `field` (`None`: the field is left out of valid bodies).
fn valid(field: &'static str) -> Option<BoxedStrategy<Value>> {
    Some(match field {
        "model" => Just(json!("dera")).boxed(),
        "prompt" => prop_oneof![
            "[a-z ]{1,12}".prop_map(Value::from),
            prop::collection::vec(0u32..100, 1..6).prop_map(Value::from),
        ]
        .boxed(),
        "messages" => "[a-z ]{0,8}"
            .prop_map(|c| json!([{"role": "user", "content": c}]))
            .boxed(),
        "max_tokens" => (0u64..8).prop_map(Value::from).boxed(),
        "echo" => any::<bool>().prop_map(Value::from).boxed(),
        "temperature" => prop_oneof![Just(0.0), 0.1f64..2.0]
            .prop_map(Value::from)
            .boxed(),
        "top_p" => (0.05f64..1.0).prop_map(Value::from).boxed(),
        "n" => (1u64..3).prop_map(Value::from).boxed(),
        "seed" => any::<i64>().prop_map(Value::from).boxed(),
        "stop" => "[a-z]{1,3}".prop_map(Value::from).boxed(),
        "stream" => any::<bool>().prop_map(Value::from).boxed(),
        "lambda" => prop_oneof![
            (-3.0f64..3.0).prop_map(Value::from),
            prop::collection::vec(-3.0f64..3.0, 2..=2).prop_map(Value::from),
        ]
        .boxed(),
        "logit_bias" => prop::collection::btree_map(0u32..100, -100.0f64..100.0, 0..3)
            .prop_map(|m| {
                Value::Object(
                    m.into_iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect(),
                )
            })
            .boxed(),
        "presence_penalty" | "frequency_penalty" => (-2.0f64..2.0).prop_map(Value::from).boxed(),
        "user" => "[a-z]{0,5}".prop_map(Value::from).boxed(),
        _ => return None,
    })
}

/// A body: a valid one (some fields left out), then up to three fields set to what clients
/// send (often out of range) or to any JSON at all.
fn body() -> impl Strategy<Value = Value> {
    let base: Vec<BoxedStrategy<Option<(String, Value)>>> = FIELDS
        .iter()
        .filter_map(|&f| {
            let v = valid(f)?;
            let v = v.prop_map(move |v| (f.to_string(), v));
            Some(if matches!(f, "model" | "prompt" | "messages") {
                v.prop_map(Some).boxed()
            } else {
                proptest::option::weighted(0.4, v).boxed()
            })
        })
        .collect();
    let mutation = (0..FIELDS.len()).prop_flat_map(|i| {
        let f = FIELDS[i];
        prop_oneof![3 => plausible(f), 1 => any_json()].prop_map(move |v| (f.to_string(), v))
    });
    (base, prop::collection::vec(mutation, 0..=3)).prop_map(|(base, mutations)| {
        let mut m = Map::new();
        for (f, v) in base.into_iter().flatten().chain(mutations) {
            m.insert(f, v);
        }
        Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn accepted_bodies_hold_only_runnable_values(body in body(), chat in any::<bool>()) {
        let info = info();
        let endpoint = if chat { Endpoint::Chat } else { Endpoint::Completions };
        match parse(body.to_string().as_bytes(), endpoint, &info) {
            Ok(p) => {
                prop_assert!(info.model_ids.contains(&p.model));
                prop_assert!((1..=MAX_N).contains(&p.n));
                prop_assert!(p.max_tokens.is_none_or(|m| m >= 1 || p.echo), "max_tokens 0 only with echo");
                prop_assert!(!p.echo || !chat, "echo: completions only");
                let prompts = match &p.prompt {
                    PromptInput::Texts(t) => t.len(),
                    PromptInput::Ids(ids) => {
                        prop_assert!(ids.iter().flatten().all(|&t| (t as usize) < info.vocab));
                        ids.len()
                    }
                    PromptInput::Chat(m) => {
                        prop_assert!(chat && !m.is_empty());
                        1
                    }
                };
                prop_assert!(prompts >= 1 && prompts * p.n <= info.max_batch);
                let l = p.mixture.lambdas();
                prop_assert_eq!(l.len(), info.num_aligned);
                prop_assert!(l.iter().all(|x| x.is_finite() && x.abs() <= 1e6));
                prop_assert!(p.mixture.coefficients().iter().all(|c| c.is_finite()));
                prop_assert!(dera::dera_logits::ProcessorChain::from_options(&p.sampling).is_ok());
                prop_assert!(p.sampling.temperature.is_none_or(|t| t > 0.0 && t <= 2.0));
                prop_assert_eq!(p.greedy, body.get("temperature").and_then(Value::as_f64) == Some(0.0));
                prop_assert!(p.sampling.logit_bias.len() <= MAX_LOGIT_BIAS);
                for (&t, &b) in &p.sampling.logit_bias {
                    prop_assert!((t as usize) < info.vocab && f64::from(b).abs() <= MAX_BIAS);
                }
                prop_assert!(p.stop.len() <= MAX_STOP);
                prop_assert!(p.stop.iter().all(|s| !s.is_empty() && s.len() <= MAX_STOP_BYTES));
                prop_assert!(p.logprobs.is_none_or(|k| k <= MAX_TOP_LOGPROBS));
            }
            Err(e) => {
                let status = e.status().as_u16();
                prop_assert!(status == 400 || status == 404, "{status}: {}", e.message);
                prop_assert!(!e.message.is_empty());
                let b = e.body();
                prop_assert_eq!(b["error"]["message"].as_str(), Some(e.message.as_str()));
                prop_assert!(b["error"]["type"].is_string());
            }
        }
    }

    #[test]
    fn any_bytes_are_refused_or_parsed_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse(&bytes, Endpoint::Completions, &info());
    }
}

/// The generator reaches both outcomes often (a property over refusals alone proves little).
#[test]
fn the_generator_reaches_accepted_and_refused_bodies() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2000 {
        let b = body().new_tree(&mut runner).expect("tree").current();
        match parse(b.to_string().as_bytes(), Endpoint::Completions, &info()) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    eprintln!("accepted {ok}, refused {err}");
    assert!(ok >= 20 && err >= 20, "accepted {ok}, refused {err}");
}
