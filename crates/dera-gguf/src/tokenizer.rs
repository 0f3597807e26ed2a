//! The `tokenizer.json` that transformers builds from a GGUF file's `tokenizer.ggml.*` metadata
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), so tokenization is the same token for token.
//!
//! `tokenizer.ggml.model = gpt2`: byte-level BPE over the file's tokens and merges; tokens not
//! written in the byte alphabet are respelled through it; the pre-tokenizer is the split regex
//! named by `tokenizer.ggml.pre` (llama3, qwen2, tekken, gpt-4o families) followed by a
//! regex-free byte-level step, or GPT-2's byte-level regex for any other value (e.g. SmolLM2's
//! `smollm`). Control tokens (type 3) become special added tokens, user-defined ones (type 4)
//! plain added tokens; BOS/EOS are added when `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` say so.
//!
//! `tokenizer.ggml.model = llama`: SentencePiece pieces with scores as a BPE with byte fallback,
//! merges recovered from the scores, Metaspace pre-tokenizer (a space prepended to the first
//! word) and the matching decoder; BOS added unless `add_bos_token` is false.

use serde_json::{Map, Value as Json, json};

use crate::{GgufError, GgufFile, Value};

/// Token type of a control token (`<|endoftext|>`, `<s>`).
const CONTROL: u64 = 3;
/// Token type of a user-defined token (`<think>`).
const USER_DEFINED: u64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value, if it has one.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

fn meta_err(file: &GgufFile, key: &str, reason: impl Into<String>) -> GgufError {
    GgufError::Metadata {
        path: file.path().to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A string array from the metadata.
fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>, GgufError> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| meta_err(file, key, "expected an array of strings"))?;
    arr.iter()
        .map(|x| {
            x.as_str()
                .ok_or_else(|| meta_err(file, key, "expected an array of strings"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `tokenizer.json` transformers builds from `file`'s metadata.
pub fn tokenizer_json(file: &GgufFile) -> Result<Json, GgufError> {
    let model = match file.get("tokenizer.ggml.model") {
        None => {
            return Err(meta_err(
                file,
                "tokenizer.ggml.model",
                "missing: the file has no tokenizer",
            ));
        }
        Some(v) => v
            .as_str()
            .ok_or_else(|| meta_err(file, "tokenizer.ggml.model", "expected a string"))?,
    };
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| meta_err(file, "tokenizer.ggml.tokens", "missing"))?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| meta_err(file, "tokenizer.ggml.token_type", "expected an array"))?
            .iter()
            .map(|t| t.as_u64().unwrap_or(0))
            .collect(),
    };
    let (model_json, pre_tokenizer, decoder, vocab, byte_level) = match model {
        "gpt2" => {
            let (m, vocab) = byte_level_bpe(file, &tokens)?;
            let pre = file
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let pre_tokenizer = match split_regex(pre) {
                Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                ]}),
                None => {
                    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
                }
            };
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (m, pre_tokenizer, decoder, vocab, true)
        }
        "llama" => {
            let (m, vocab) = sentencepiece_bpe(file, &tokens)?;
            let pre_tokenizer = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]});
            (m, pre_tokenizer, decoder, vocab, false)
        }
        other => {
            return Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                reason: format!(
                    "tokenizer.ggml.model `{other}` is not supported (gpt2, byte-level BPE, and llama, SentencePiece BPE, are)"
                ),
            });
        }
    };
    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let token_of = |k: &str| -> Option<(u64, &str)> {
        let id = file
            .get(&format!("tokenizer.ggml.{k}_token_id"))?
            .as_u64()?;
        Some((id, tokens.get(usize::try_from(id).ok()?).copied()?))
    };
    // Control tokens (type 3) and the tokens the config names (BOS, EOS, UNK, PAD) are special
    // added tokens; user-defined ones (type 4) plain added tokens.
    let named: Vec<u64> = ["bos", "eos", "unknown", "padding"]
        .iter()
        .filter_map(|k| token_of(k).map(|(id, _)| id))
        .collect();
    let mut added = Vec::new();
    for (id, &t) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(0);
        let special = match ty {
            CONTROL if !byte_level || in_alphabet(t) => true,
            USER_DEFINED if vocab.contains_key(t) => false,
            _ if named.contains(&(id as u64)) && vocab.contains_key(t) => true,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
    let flag = |k: &str, default: bool| file.get(k).and_then(Value::as_bool).unwrap_or(default);
    // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
    let bos = flag("tokenizer.ggml.add_bos_token", model == "llama")
        .then(|| token_of("bos"))
        .flatten();
    let eos = flag("tokenizer.ggml.add_eos_token", false)
        .then(|| token_of("eos"))
        .flatten();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": template(bos, eos),
        "decoder": decoder,
        "model": model_json,
    }))
}

/// `gpt2`: the file's tokens (respelled in the byte alphabet when needed) and merges.
fn byte_level_bpe(
    file: &GgufFile,
    tokens: &[&str],
) -> Result<(Json, Map<String, Json>), GgufError> {
    let merges = strings(file, "tokenizer.ggml.merges")?.ok_or_else(|| {
        meta_err(
            file,
            "tokenizer.ggml.merges",
            "missing (a byte-level BPE needs its merges)",
        )
    })?;
    let alphabet = byte_alphabet();
    let mut vocab = Map::new();
    for (id, &t) in tokens.iter().enumerate() {
        let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => json!([a, b]),
            None => json!([m]),
        })
        .collect();
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
        "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": false, "vocab": vocab, "merges": merges,
    });
    let vocab = vocab_of(&model);
    Ok((model, vocab))
}

/// `llama`: SentencePiece pieces with byte fallback; the merges are recovered from the scores
/// as transformers' `generate_merges` does (every split of a piece into two pieces, best score
/// first, ties by the pieces' lengths).
fn sentencepiece_bpe(
    file: &GgufFile,
    tokens: &[&str],
) -> Result<(Json, Map<String, Json>), GgufError> {
    let key = "tokenizer.ggml.scores";
    let scores: Vec<f64> = match file.get(key) {
        None => {
            return Err(meta_err(
                file,
                key,
                "missing (a SentencePiece vocabulary needs its scores)",
            ));
        }
        Some(v) => v
            .as_array()
            .ok_or_else(|| meta_err(file, key, "expected an array of numbers"))?
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| meta_err(file, key, "expected an array of numbers"))
            })
            .collect::<Result<_, _>>()?,
    };
    if scores.len() != tokens.len() {
        return Err(meta_err(
            file,
            key,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let mut index = std::collections::HashMap::new();
    let mut score_of = std::collections::HashMap::new();
    let mut order = Vec::new();
    for (id, (&t, &s)) in tokens.iter().zip(&scores).enumerate() {
        if index.insert(t, id).is_none() {
            order.push(t);
        }
        score_of.insert(t, s);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &piece in &order {
        let score = score_of[piece];
        let mut local: Vec<(&str, &str, f64)> = piece
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&piece[..i], &piece[i..]))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    let key_of = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key_of(a), key_of(b));
        kb.0.partial_cmp(&ka.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    let mut vocab = Map::new();
    for (id, &t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), json!(id));
    }
    let merges: Vec<Json> = merges.iter().map(|(l, r, _)| json!([l, r])).collect();
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
        "ignore_merges": false, "vocab": vocab, "merges": merges,
    });
    let vocab = vocab_of(&model);
    Ok((model, vocab))
}

fn vocab_of(model: &Json) -> Map<String, Json> {
    model["vocab"].as_object().cloned().unwrap_or_default()
}

/// transformers' post-processor: `[BOS] A [EOS]` for one sequence, as the flags ask.
fn template(bos: Option<(u64, &str)>, eos: Option<(u64, &str)>) -> Json {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (s, type_id) in [("A", 0), ("B", 1)] {
        let part = if type_id == 0 { &mut single } else { &mut pair };
        if let Some((_, t)) = bos {
            part.push(special(t, type_id));
        }
        part.push(seq(s, type_id));
        if let Some((_, t)) = eos {
            part.push(special(t, type_id));
        }
    }
    let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
    let mut specials = Map::new();
    for (id, t) in bos.into_iter().chain(eos) {
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}
