#!/usr/bin/env python3
"""Generate the GGUF golden fixtures under tests/fixtures/gguf/.

Tiny random Llama and Qwen2 models are written as GGUF files with the `gguf` package's writer
and quantizers (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_NL, IQ4_XS have no Python
quantizer, so their blocks are random bytes with sensible scales), each with a real tokenizer
in the metadata (the byte-level BPE of tests/fixtures/golden/models/llama/tokenizer.json, or a
SentencePiece BPE vocabulary with scores trained on the golden corpus) and a chat template. Then transformers loads every file (`AutoModelForCausalLM.from_pretrained(dir,
gguf_file=...)`, `AutoTokenizer` likewise, float32, eager attention, CPU) and the script records
what it computes: tokenization of a few strings, the chat template rendering, next-token
log-probs and greedy tokens. Also the dequantized values of each quantized type, as the `gguf`
package's `dequantize` gives them, for the dequantization unit tests.

Usage:  python scripts/golden/generate_gguf.py [--out tests/fixtures/gguf]
(pinned environment: scripts/golden/requirements.txt). The existing golden fixtures are not
touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf
import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

REPO = Path(__file__).resolve().parents[2]
SOURCE_TOKENIZER = REPO / "tests/fixtures/golden/models/llama/tokenizer.json"
GREEDY_NEW_TOKENS = 8

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, numbers 12345 and café!\nnew line",
    "<s>special</s> <|endoftext|>",
    "Hello  world, the bakery's bread: 42 ☃ naïve",
]
PROMPTS = ["Hello world", "In the village by the river, the old baker opens the café"]
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me about the quick brown fox."},
]
# Two different templates, so a test that reads the wrong one fails.
TEMPLATE_A = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TEMPLATE_B = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]{% endif %}"
)

# name, architecture, seed, shape, tensor types, tokenizer settings
MODELS = [
    {
        "name": "llama_q8_0", "arch": "llama", "seed": 11, "hidden": 64, "heads": 4, "kv_heads": 2,
        "inter": 128, "layers": 2, "tied": False,
        "types": {"default": Q.Q8_0, "token_embd": Q.Q8_0, "output": Q.Q8_0},
        "pre": "smollm", "bos": 1, "eos": 2, "add_bos": False, "template": TEMPLATE_A,
    },
    {
        "name": "llama_q4_0_tied", "arch": "llama", "seed": 12, "hidden": 64, "heads": 4, "kv_heads": 4,
        "inter": 96, "layers": 2, "tied": True,
        "types": {"default": Q.Q4_0, "token_embd": Q.F16, "ffn_down": Q.Q8_0},
        "pre": "llama-bpe", "bos": 1, "eos": 2, "add_bos": True, "template": TEMPLATE_B,
    },
    {
        "name": "qwen2_mixed", "arch": "qwen2", "seed": 13, "hidden": 64, "heads": 4, "kv_heads": 2,
        "inter": 128, "layers": 2, "tied": False,
        "types": {"default": Q.Q4_1, "token_embd": Q.BF16, "output": Q.F16, "attn_v": Q.F32, "attn_output": Q.Q8_0},
        "pre": "qwen2", "bos": None, "eos": 0, "add_bos": False, "template": TEMPLATE_A,
    },
    {
        "name": "llama_spm", "arch": "llama", "seed": 15, "hidden": 64, "heads": 4, "kv_heads": 1,
        "inter": 64, "layers": 1, "tied": True, "tokenizer": "llama",
        "types": {"default": Q.Q8_0, "token_embd": Q.F16},
        "pre": None, "bos": 1, "eos": 2, "add_bos": True, "template": TEMPLATE_B,
    },
    {
        "name": "llama_kquants", "arch": "llama", "seed": 14, "hidden": 256, "heads": 4, "kv_heads": 2,
        "inter": 256, "layers": 1, "tied": False,
        "types": {"default": Q.Q4_K, "attn_v": Q.Q6_K, "ffn_down": Q.Q5_K, "token_embd": Q.Q4_K, "output": Q.Q6_K},
        "pre": "smollm", "bos": 1, "eos": 2, "add_bos": False, "template": TEMPLATE_B,
    },
    {
        # The 5-bit block types that llama.cpp's Q4_K_M / Q5_K_M files hold where rows are not
        # whole 256-weight super-blocks (small models such as SmolLM2-135M or Qwen2.5-0.5B).
        "name": "llama_q5", "arch": "llama", "seed": 16, "hidden": 64, "heads": 4, "kv_heads": 2,
        "inter": 128, "layers": 2, "tied": False,
        "types": {"default": Q.Q5_0, "attn_v": Q.Q5_1, "ffn_down": Q.Q5_1, "token_embd": Q.Q5_1, "output": Q.Q5_0},
        "pre": "smollm", "bos": 1, "eos": 2, "add_bos": False, "template": TEMPLATE_A,
    },
    {
        # What llama.cpp's Q3_K_M files hold where rows are whole super-blocks.
        "name": "llama_q3_k", "arch": "llama", "seed": 17, "hidden": 256, "heads": 4, "kv_heads": 2,
        "inter": 256, "layers": 1, "tied": False,
        "types": {"default": Q.Q3_K, "attn_v": Q.Q5_K, "ffn_down": Q.Q4_K, "token_embd": Q.Q3_K, "output": Q.Q6_K},
        "pre": "smollm", "bos": 1, "eos": 2, "add_bos": False, "template": TEMPLATE_B,
    },
    {
        # What llama.cpp's Q2_K files hold where rows are whole super-blocks.
        "name": "llama_q2_k", "arch": "llama", "seed": 18, "hidden": 256, "heads": 4, "kv_heads": 2,
        "inter": 256, "layers": 1, "tied": True,
        "types": {"default": Q.Q2_K, "attn_v": Q.Q3_K, "ffn_down": Q.Q3_K, "token_embd": Q.Q4_K},
        "pre": "smollm", "bos": 1, "eos": 2, "add_bos": False, "template": TEMPLATE_A,
    },
    {
        # IQ4_XS files (IQ4_NL where llama.cpp falls back, as in small models' Q2_K/Q3_K files).
        "name": "llama_iq4", "arch": "llama", "seed": 19, "hidden": 256, "heads": 4, "kv_heads": 2,
        "inter": 256, "layers": 1, "tied": False,
        "types": {"default": Q.IQ4_XS, "attn_v": Q.IQ4_NL, "ffn_down": Q.IQ4_NL, "token_embd": Q.IQ4_XS, "output": Q.Q6_K},
        "pre": "smollm", "bos": 1, "eos": 2, "add_bos": False, "template": TEMPLATE_B,
    },
]


def log(msg: str) -> None:
    print(f"[gguf-golden] {msg}", file=sys.stderr, flush=True)


def f32list(t) -> list:
    return [float(x) for x in np.asarray(t, dtype=np.float32).reshape(-1).tolist()]


# ----------------------------------------------------------------------------- tokenizer


def token_list():
    tok = json.loads(SOURCE_TOKENIZER.read_text(encoding="utf-8"))
    vocab = dict(tok["model"]["vocab"])
    for a in tok["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens)
    special = {a["id"] for a in tok["added_tokens"] if a["special"]}
    types = [3 if i in special else 1 for i in range(len(tokens))]  # CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def spm_vocab():
    """A SentencePiece BPE vocabulary (byte fallback, scores) trained on the golden corpus, as
    llama.cpp stores one: pieces, scores and token types (1 normal, 2 unknown, 3 control, 6 byte)."""
    import io

    import sentencepiece as spm

    source = (REPO / "scripts/golden/generate_golden.py").read_text(encoding="utf-8")
    start = source.index('CORPUS = """\\\n') + len('CORPUS = """\\\n')
    text = source[start : source.index('"""', start)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", split_digits=True, minloglevel=2,
        num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = [float(sp.get_score(i)) for i in range(n)]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    return tokens, scores, types


def add_tokenizer(w: gguf.GGUFWriter, spec: dict) -> int:
    if spec.get("tokenizer") == "llama":
        tokens, scores, types = spm_vocab()
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(spec["bos"])
        w.add_eos_token_id(spec["eos"])
        w.add_unk_token_id(0)
        w.add_add_bos_token(spec["add_bos"])
        w.add_chat_template(spec["template"])
        return len(tokens)
    tokens, types, merges = token_list()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(spec["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if spec["bos"] is not None:
        w.add_bos_token_id(spec["bos"])
    w.add_eos_token_id(spec["eos"])
    w.add_add_bos_token(spec["add_bos"])
    w.add_chat_template(spec["template"])
    return len(tokens)


# ---------------------------------------------------------------------------- weights


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (q with heads, k with kv heads)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_kquant(rng: np.random.Generator, qtype, shape) -> np.ndarray:
    """Random K-quant blocks (no Python quantizer exists): random bytes, scales set so weights
    are of order 0.2 like the other matrices."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    n_blocks = rows * cols // block
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    def f16(vals):
        return np.asarray(vals, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype in (Q.Q4_K, Q.Q5_K):
        top = 15 if qtype == Q.Q4_K else 31
        b[:, 0:2] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.4 / (63 * top))
        b[:, 2:4] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.2 / 63)
    elif qtype == Q.Q6_K:
        b[:, 208:210] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.4 / (127 * 32))
    elif qtype == Q.Q3_K:
        b[:, 108:110] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.4 / (32 * 4))
    elif qtype == Q.IQ4_NL:
        b[:, 0:2] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.4 / 127)
    elif qtype == Q.IQ4_XS:
        b[:, 0:2] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.4 / (32 * 127))
    elif qtype == Q.Q2_K:
        b[:, 80:82] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.4 / (15 * 3))
        b[:, 82:84] = f16(rng.uniform(0.5, 1.0, n_blocks) * 0.2 / 15)
    else:
        raise ValueError(qtype)
    return b.reshape(rows, cols // block * size)


def encode(rng, qtype, arr: np.ndarray):
    """(data, raw_dtype) for the writer."""
    arr = arr.astype(np.float32)
    if qtype == Q.F32:
        return arr, None
    if qtype == Q.F16:
        return arr.astype(np.float16), None
    if qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS):
        return random_kquant(rng, qtype, arr.shape), qtype
    return gguf.quants.quantize(arr, qtype), qtype


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    parts = hf.split(".")  # model.layers.N.<a>.<b>.weight
    n, rest = parts[2], ".".join(parts[3:])
    base, kind = rest.rsplit(".", 1)
    return f"blk.{n}.{LAYER_NAMES[base]}.{kind}"


def build_model(spec: dict, vocab: int):
    torch.manual_seed(spec["seed"])
    common = dict(
        vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["inter"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"], max_position_embeddings=256,
        tie_word_embeddings=spec["tied"],
    )
    if spec["arch"] == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, rms_norm_eps=1e-6, rope_theta=1000000.0))
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def write_gguf(spec: dict, path: Path) -> None:
    rng = np.random.default_rng(spec["seed"])
    arch = spec["arch"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(spec["name"])
    vocab = len(spm_vocab()[0]) if spec.get("tokenizer") == "llama" else len(token_list()[0])
    model = build_model(spec, vocab)
    head_dim = spec["hidden"] // spec["heads"]
    w.add_context_length(256)
    w.add_embedding_length(spec["hidden"])
    w.add_block_count(spec["layers"])
    w.add_feed_forward_length(spec["inter"])
    w.add_head_count(spec["heads"])
    w.add_head_count_kv(spec["kv_heads"])
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    w.add_vocab_size(vocab)
    w.add_file_type(1)
    add_tokenizer(w, spec)
    for hf, t in model.state_dict().items():
        if spec["tied"] and hf == "lm_head.weight":
            continue
        name = gguf_name(hf)
        arr = t.detach().numpy()
        if arch == "llama" and name.endswith("attn_q.weight"):
            arr = permute(arr, spec["heads"])
        elif arch == "llama" and name.endswith("attn_k.weight"):
            arr = permute(arr, spec["kv_heads"])
        key = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        qtype = spec["types"].get(key, spec["types"]["default"]) if arr.ndim == 2 else Q.F32
        data, raw = encode(rng, qtype, arr)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -------------------------------------------------------------------------- reference


def reference(spec: dict, out: Path) -> dict:
    fname = f"{spec['name']}.gguf"
    tok = AutoTokenizer.from_pretrained(str(out), gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(
        str(out), gguf_file=fname, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    case = {
        "file": fname,
        "tokenizer_class": type(tok).__name__,
        "tokenization": [{"text": t, "ids": tok(t)["input_ids"]} for t in TEXTS],
        "decode": [{"ids": tok(t)["input_ids"], "text": tok.decode(tok(t)["input_ids"], skip_special_tokens=True)} for t in TEXTS[:3]],
        "chat": tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "prompts": [],
    }
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
            greedy = model.generate(
                torch.tensor([ids]), max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )[0, len(ids):].tolist()
            # Every greedy step's top-1 / top-2 margin, so a fixture is not decided by rounding.
            steps = model(greedy_ids := torch.tensor([ids + greedy])).logits[0, len(ids) - 1 : -1]
            top2 = torch.log_softmax(steps, dim=-1).topk(2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
            assert margin > 1e-3, (spec["name"], prompt, margin)
            del greedy_ids
        case["prompts"].append({
            "text": prompt, "ids": ids,
            "next_token_logprobs": f32list(torch.log_softmax(logits, dim=-1)),
            "greedy": greedy,
            "greedy_min_margin": margin,
        })
    return case


def dequant_cases(out: Path) -> dict:
    """Every quantized tensor type: the first 64 values of one tensor, as `gguf.dequantize` gives them."""
    cases = {}
    for spec in MODELS:
        r = gguf.GGUFReader(str(out / f"{spec['name']}.gguf"))
        for t in r.tensors:
            tname = t.tensor_type.name
            if tname in cases or t.tensor_type in (Q.F32,):
                continue
            values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
            cases[tname] = {"file": f"{spec['name']}.gguf", "tensor": t.name, "first": f32list(values[:320]),
                            "sum": float(np.asarray(values, dtype=np.float64).sum())}
    return cases


def fuzz_seeds(out: Path) -> None:
    """Small valid GGUF files (and a truncated one) as seeds for fuzz/corpus/gguf."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for name, arch, qtype, cols in [("llama_q8_0", "llama", Q.Q8_0, 32), ("qwen2_q4_1", "qwen2", Q.Q4_1, 32),
                                    ("llama_q4_k", "llama", Q.Q4_K, 256), ("llama_q6_k", "llama", Q.Q6_K, 256)]:
        path = out / f"{name}.gguf"
        w = gguf.GGUFWriter(str(path), arch)
        w.add_embedding_length(cols)
        w.add_block_count(1)
        w.add_feed_forward_length(cols)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_context_length(64)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
        w.add_token_list(["a", "b", "ab", "<s>"])
        w.add_token_types([1, 1, 1, 3])
        w.add_token_merges(["a b"])
        w.add_bos_token_id(3)
        w.add_eos_token_id(3)
        w.add_chat_template("{{ messages[0]['content'] }}")
        for t, shape in [("token_embd.weight", (4, cols)), ("blk.0.attn_q.weight", (8, cols)),
                         ("blk.0.attn_k.weight", (4, cols))]:
            data, raw = encode(rng, qtype, rng.standard_normal(shape).astype(np.float32))
            w.add_tensor(t, data, raw_dtype=raw)
        w.add_tensor("output_norm.weight", np.ones(cols, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    whole = (out / "llama_q8_0.gguf").read_bytes()
    (out / "truncated.gguf").write_bytes(whole[: len(whole) // 2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "tests/fixtures/gguf"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gguf": getattr(gguf, "__version__", "0.19.0"), "numpy": np.__version__},
        "chat_messages": CHAT_MESSAGES,
        "models": {},
    }
    for spec in MODELS:
        path = out / f"{spec['name']}.gguf"
        log(f"writing {path.name}")
        write_gguf(spec, path)
        expected["models"][spec["name"]] = reference(spec, out)
    expected["dequant"] = dequant_cases(out)
    fuzz_seeds(REPO / "fuzz/corpus/gguf")
    with open(out / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    log("done")


if __name__ == "__main__":
    main()
