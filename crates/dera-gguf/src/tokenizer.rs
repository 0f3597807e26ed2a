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
    if model != "gpt2" {
        return Err(GgufError::Unsupported {
            path: file.path().to_path_buf(),
            reason: format!(
                "tokenizer.ggml.model `{model}` is not supported yet (gpt2, the byte-level BPE, is)"
            ),
        });
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| meta_err(file, "tokenizer.ggml.tokens", "missing"))?;
    let merges = strings(file, "tokenizer.ggml.merges")?.ok_or_else(|| {
        meta_err(
            file,
            "tokenizer.ggml.merges",
            "missing (a byte-level BPE needs its merges)",
        )
    })?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| meta_err(file, "tokenizer.ggml.token_type", "expected an array"))?
            .iter()
            .map(|t| t.as_u64().unwrap_or(0))
            .collect(),
    };
    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (id, &t) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(t) {
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
    let mut added = Vec::new();
    for (id, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = match ty {
            CONTROL if in_alphabet(t) => true,
            USER_DEFINED if vocab.contains_key(t) => false,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
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
    let flag = |k: &str| file.get(k).and_then(Value::as_bool).unwrap_or(false);
    let token_of = |k: &str| -> Option<(u64, &str)> {
        let id = file
            .get(&format!("tokenizer.ggml.{k}_token_id"))?
            .as_u64()?;
        Some((id, tokens.get(usize::try_from(id).ok()?).copied()?))
    };
    let bos = flag("tokenizer.ggml.add_bos_token")
        .then(|| token_of("bos"))
        .flatten();
    let eos = flag("tokenizer.ggml.add_eos_token")
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
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
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
