#!/usr/bin/env python3
"""Generate the golden fixtures under tests/fixtures/golden/.

Everything is built locally from configs (no model hub access): a tiny
byte-level BPE tokenizer, tiny randomly initialised Llama / Qwen2 / GPT-2
checkpoints, and reference outputs computed with Hugging Face transformers
(float32, eval mode, eager attention, CPU).

Usage:  python scripts/golden/generate_golden.py [--out tests/fixtures/golden]
(normally run through scripts/golden/make_fixtures.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

# Never touch the network: everything is built from local configs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SEED = 1234  # global torch / numpy seed
# Per-model generator seeds (weights / aligned noise). The llama / aligned / gpt2 seeds were
# picked (scripts/golden/search_seeds.py) so that every greedy DeRa step has a top-1 vs top-2
# log-prob margin >= GREEDY_MIN_MARGIN and no greedy output contains a special token; this
# keeps the greedy fixtures stable under ~1e-4 numerical differences and EOS handling.
SEEDS = {
    "llama": 1236,
    "llama_aligned_a": 1254,
    "llama_aligned_b": 1255,
    "llama3_legacy": 1240,
    "qwen2": 1237,
    "gpt2": 1238,
    "gpt2_aligned": 1255,
    "gpt2_variant": 1241,
    "mistral": 1242,
}
GREEDY_MIN_MARGIN = 0.01
VOCAB_SIZE = 400  # target size for the BPE trainer (256 bytes + 3 specials + merges)
MIN_FREQ = 1
HIDDEN = 64
LAYERS = 2
INTERMEDIATE = 128
MAX_POS = 128
WEIGHT_STD = 0.2  # matrices / embeddings
BIAS_STD = 0.1  # biases
NORM_STD = 0.1  # norm gains are 1 + N(0, NORM_STD)
ALIGNED_NOISE_STD = 0.1
GREEDY_NEW_TOKENS = 12

SPECIAL_TOKENS = ["<|endoftext|>", "<s>", "</s>"]  # ids 0, 1, 2
EOT_ID, BOS_ID, EOS_ID = 0, 1, 2

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "In the village by the river, the old baker opens the café, and the children buy warm bread.",
]

# Built-in training text for the tokenizer (a few plain English paragraphs).
CORPUS = """\
Hello world! This is a tiny corpus used to train a byte-level BPE tokenizer for the
golden test fixtures. The quick brown fox jumps over the lazy dog. The lazy dog sleeps
in the sun while the quick fox runs through the field and over the hill.

In the small village by the river, the old baker wakes up before sunrise every morning.
He opens the café, lights the oven and bakes warm bread for the people of the village.
The children stop at the bakery on their way to school, and the baker gives them a
small piece of bread with honey. In the evening the village is quiet, and the river
sings softly under the old stone bridge.

Language models predict the next token given the previous tokens. A model that has been
aligned with human preferences can be mixed with its reference model at decoding time:
the logits of the two models are combined with a weight lambda, and the next token is
chosen from the mixture. When lambda is zero we recover the reference model, when lambda
is one we recover the aligned model, and larger values extrapolate beyond the aligned
model. This is a simple and cheap way to explore the strength of the alignment.

The user asks a question and the assistant answers it. The assistant should be helpful,
honest and harmless. Every answer starts with a short summary and then gives the details.
Numbers such as 1, 2, 3, 10, 42 and 2024 also appear in the text, together with some
punctuation: commas, periods, colons; question marks? and exclamation marks!
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello world"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me about the quick brown fox."},
]

DERA_LAMBDAS = [0.0, 0.25, 0.5, 1.0, 2.0, 5.0]
DERA_MULTI_LAMBDAS = [0.7, 0.6]
SCORE_LAMBDA = 2.0
GPT2_LAMBDA = 2.0
MERGE_LAMBDA = 0.5


# --------------------------------------------------------------------------- utils


def log(msg: str) -> None:
    print(f"[golden] {msg}", file=sys.stderr, flush=True)


def f32list(t: torch.Tensor) -> list:
    """Exact float values (float32 -> Python float keeps the exact value)."""
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def f64list(t: torch.Tensor) -> list:
    return [float(x) for x in t.detach().to(torch.float64).reshape(-1).tolist()]


def _dump(obj, indent: int) -> str:
    """Pretty JSON, but lists of scalars stay on one line (keeps float arrays compact)."""
    pad, pad1 = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(x, (dict, list)) for x in obj):
            return "[" + ", ".join(json.dumps(x, ensure_ascii=False) for x in obj) + "]"
        items = [pad1 + _dump(x, indent + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, float):
        assert obj == obj and obj not in (float("inf"), float("-inf")), obj
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_dump(obj, 0))
        f.write("\n")


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------- tokenizer


def build_base_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=MIN_FREQ,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.splitlines()]
    tok.train_from_iterator(lines, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def save_tokenizer(base: Tokenizer, out_dir: Path, family: str) -> None:
    """family: 'llama' (adds <s>), 'qwen2' / 'gpt2' (adds nothing)."""
    tok = Tokenizer.from_str(base.to_str())
    if family == "llama":
        # Same shape as the Llama 3 tokenizer.json: ByteLevel + TemplateProcessing.
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
                processors.TemplateProcessing(
                    single="<s> $A",
                    pair="<s> $A <s> $B:1",
                    special_tokens=[("<s>", BOS_ID)],
                ),
            ]
        )
        bos, eos = "<s>", "</s>"
    elif family == "qwen2":
        tok.post_processor = None
        bos, eos = None, "<|endoftext|>"
    elif family == "gpt2":
        tok.post_processor = None
        bos, eos = "<|endoftext|>", "<|endoftext|>"
    else:
        raise ValueError(family)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=False)
    write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos,
            "eos_token": eos,
            "unk_token": None,
            "pad_token": None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POS,
            "chat_template": CHAT_TEMPLATE,
        },
    )


# -------------------------------------------------------------------------- models


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Deterministic N(0, std) init of every parameter (norm gains around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params are yielded once
            shape = tuple(p.shape)
            noise = torch.randn(shape, generator=g, dtype=torch.float32)
            is_norm = p.ndim == 1 and any(k in name for k in ("norm", "ln_"))
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + NORM_STD * noise)
            elif name.endswith("bias"):
                p.copy_(BIAS_STD * noise)
            else:
                p.copy_(WEIGHT_STD * noise)


def add_noise_(model: torch.nn.Module, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(std * torch.randn(tuple(p.shape), generator=g, dtype=torch.float32))


def finish(model):
    model = model.to(torch.float32)
    model.eval()
    return model


def llama_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        attn_implementation="eager",
    )


def llama3_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # 4 * 32 = 128 != hidden 64
        hidden_act="silu",
        max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        attn_implementation="eager",
    )


def qwen2_config(vocab: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=EOT_ID,
        pad_token_id=None,
        attn_implementation="eager",
    )


def gpt2_config(vocab: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab,
        n_positions=MAX_POS,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=4,
        n_inner=INTERMEDIATE,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=None,
        attn_implementation="eager",
    )


def save_model(model, out_dir: Path, **kwargs) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True, **kwargs)
    # save_pretrained may write its own generation_config.json; we overwrite it
    gc = out_dir / "generation_config.json"
    if gc.exists():
        gc.unlink()


def strip_prefix(path: Path, prefix: str) -> None:
    """Rewrite a safetensors file with `prefix` removed from every tensor name."""
    from safetensors.torch import load_file

    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def save_generation_config(out_dir: Path, bos, eos) -> None:
    gc = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    gc.save_pretrained(str(out_dir))


def legacyize_llama3_config(model_dir: Path) -> None:
    """Rewrite config.json into the pre-5.x form (Llama 3.1 style)."""
    cfg = read_json(model_dir / "config.json")
    rp = cfg.pop("rope_parameters")
    dtype = cfg.pop("dtype", "float32")
    legacy = {}
    for k, v in cfg.items():
        legacy[k] = v
    legacy["rope_theta"] = rp["rope_theta"]
    legacy["rope_scaling"] = {
        "factor": rp["factor"],
        "high_freq_factor": rp["high_freq_factor"],
        "low_freq_factor": rp["low_freq_factor"],
        "original_max_position_embeddings": rp["original_max_position_embeddings"],
        "rope_type": "llama3",
    }
    legacy["torch_dtype"] = dtype
    legacy["transformers_version"] = "4.43.0"
    with open(model_dir / "config.json", "w", encoding="utf-8") as f:
        json.dump(legacy, f, indent=2, sort_keys=True)
        f.write("\n")


def load_model(model_dir: Path):
    m = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager"
    )
    m.eval()
    return m


# ----------------------------------------------------------------------- reference


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)  # [T, V]


def mix_logits(hs: list[torch.Tensor], lambdas: list[float]) -> torch.Tensor:
    """h_ref + sum_i l_i (h_i - h_ref) == (1 - sum l) h_ref + sum l_i h_i, in float64."""
    ref = hs[0].to(torch.float64)
    out = (1.0 - sum(lambdas)) * ref
    for l, h in zip(lambdas, hs[1:]):
        out = out + l * h.to(torch.float64)
    return out


def dera_case(models_: list, lambdas: list[float], prompt_ids: list[int], tok) -> dict:
    # next-token log-probs after the prompt
    hs = [logits_of(m, prompt_ids)[-1] for m in models_]
    mixed = mix_logits(hs, lambdas)
    next_lp = torch.log_softmax(mixed, dim=-1)
    # greedy decoding, full forward every step, no EOS stopping
    seq = list(prompt_ids)
    new, margins, chosen_lp = [], [], []
    for _ in range(GREEDY_NEW_TOKENS):
        hs = [logits_of(m, seq)[-1] for m in models_]
        lp = torch.log_softmax(mix_logits(hs, lambdas), dim=-1)
        top2 = torch.topk(lp, 2)
        nxt = int(torch.argmax(lp))
        assert nxt == int(top2.indices[0])
        new.append(nxt)
        margins.append(float(top2.values[0] - top2.values[1]))
        chosen_lp.append(float(lp[nxt]))
        seq.append(nxt)
    if min(margins) < GREEDY_MIN_MARGIN or any(t < len(SPECIAL_TOKENS) for t in new):
        log(f"WARNING: fragile greedy case lambdas={lambdas}: min margin {min(margins):.2e}, ids {new}")
    return {
        "lambdas": lambdas,
        "next_token_logprobs": f64list(next_lp),
        "next_token_argmax": int(torch.argmax(next_lp)),
        "greedy_new_ids": new,
        "greedy_logprobs": chosen_lp,
        "greedy_top1_top2_margin": margins,
        "greedy_min_margin": min(margins),
        "greedy_contains_special": any(t < len(SPECIAL_TOKENS) for t in new),
        "greedy_text": tok.decode(new, skip_special_tokens=False),
    }


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="output dir (default: <repo>/tests/fixtures/golden)")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[2]
    out = Path(args.out) if args.out else repo / "tests" / "fixtures" / "golden"

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    # Start from a clean tree so no stale files survive.
    for sub in ("models", "expected"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    mdir = out / "models"
    edir = out / "expected"

    # ---- tokenizer
    base_tok = build_base_tokenizer()
    vocab = base_tok.get_vocab_size()
    log(f"tokenizer vocab size {vocab}")

    # ---- models
    specs = {}  # name -> (family, generation bos, generation eos)
    # Copies of another model's weights (sharded copy, aligned noise variants) only get
    # reference logits for prompt 0 to keep the fixtures small.
    derived = {"llama_sharded", "llama_bf16", "llama_aligned_a", "llama_aligned_b", "gpt2_aligned", "gpt2_variant", "mistral"}

    llama = finish(LlamaForCausalLM(llama_config(vocab)))
    randomize_(llama, SEEDS["llama"])
    save_model(llama, mdir / "llama")
    specs["llama"] = ("llama", BOS_ID, [EOT_ID, EOS_ID])

    # sharded copy of the same weights
    save_model(llama, mdir / "llama_sharded", max_shard_size="200KB")
    specs["llama_sharded"] = ("llama", BOS_ID, [EOT_ID, EOS_ID])

    # bf16 copy
    llama_bf16 = finish(LlamaForCausalLM(llama_config(vocab)))
    llama_bf16.load_state_dict(llama.state_dict())
    llama_bf16 = llama_bf16.to(torch.bfloat16)
    save_model(llama_bf16, mdir / "llama_bf16")
    specs["llama_bf16"] = ("llama", BOS_ID, [EOT_ID, EOS_ID])
    del llama_bf16

    # aligned variants: llama + independent noise
    for name, seed in (("llama_aligned_a", SEEDS["llama_aligned_a"]), ("llama_aligned_b", SEEDS["llama_aligned_b"])):
        m = finish(LlamaForCausalLM(llama_config(vocab)))
        m.load_state_dict(llama.state_dict())
        add_noise_(m, seed, ALIGNED_NOISE_STD)
        save_model(m, mdir / name)
        specs[name] = ("llama", BOS_ID, [EOT_ID, EOS_ID])

    # llama3-style, explicit head_dim, tied, then legacy config.json
    l3 = finish(LlamaForCausalLM(llama3_config(vocab)))
    randomize_(l3, SEEDS["llama3_legacy"])
    save_model(l3, mdir / "llama3_legacy")
    current_cfg_l3 = read_json(mdir / "llama3_legacy" / "config.json")
    legacyize_llama3_config(mdir / "llama3_legacy")
    specs["llama3_legacy"] = ("llama", BOS_ID, EOS_ID)

    qwen = finish(Qwen2ForCausalLM(qwen2_config(vocab)))
    randomize_(qwen, SEEDS["qwen2"])
    save_model(qwen, mdir / "qwen2")
    specs["qwen2"] = ("qwen2", None, EOT_ID)

    gpt2 = finish(GPT2LMHeadModel(gpt2_config(vocab)))
    randomize_(gpt2, SEEDS["gpt2"])
    save_model(gpt2, mdir / "gpt2")
    specs["gpt2"] = ("gpt2", EOT_ID, EOT_ID)

    g2a = finish(GPT2LMHeadModel(gpt2_config(vocab)))
    g2a.load_state_dict(gpt2.state_dict())
    add_noise_(g2a, SEEDS["gpt2_aligned"], ALIGNED_NOISE_STD)
    save_model(g2a, mdir / "gpt2_aligned")
    specs["gpt2_aligned"] = ("gpt2", EOT_ID, EOT_ID)
    # GPT-2 variant: exact-erf gelu, attention scaled by 1/(layer+1), half-precision weights, and
    # tensor names without the `transformer.` prefix (as the original hub checkpoint has them).
    g2v_cfg = gpt2_config(vocab)
    g2v_cfg.n_embd, g2v_cfg.n_head, g2v_cfg.n_inner = 32, 2, 64
    g2v_cfg.activation_function = "gelu"
    g2v_cfg.scale_attn_by_inverse_layer_idx = True
    g2v = finish(GPT2LMHeadModel(g2v_cfg))
    randomize_(g2v, SEEDS["gpt2_variant"])
    g2v = g2v.to(torch.float16)
    save_model(g2v, mdir / "gpt2_variant")
    strip_prefix(mdir / "gpt2_variant" / "model.safetensors", "transformer.")
    specs["gpt2_variant"] = ("gpt2", EOT_ID, EOT_ID)

    # Mistral (Llama-like; sliding window longer than the prompts), f16 weights, head_dim unset.
    mis_cfg = MistralConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-5, sliding_window=4096, tie_word_embeddings=False,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, attn_implementation="eager",
    )
    mis = finish(MistralForCausalLM(mis_cfg))
    randomize_(mis, SEEDS["mistral"])
    mis = mis.to(torch.float16)
    save_model(mis, mdir / "mistral")
    specs["mistral"] = ("llama", BOS_ID, EOS_ID)

    for name, (family, bos, eos) in specs.items():
        save_tokenizer(base_tok, mdir / name, family)
        save_generation_config(mdir / name, bos, eos)

    # ---- consistency checks on reloads
    ids0 = AutoTokenizer.from_pretrained(str(mdir / "llama"))(PROMPTS[2])["input_ids"]
    with torch.no_grad():
        # legacy config loads and matches the in-memory model
        l3_loaded = load_model(mdir / "llama3_legacy")
        d = (logits_of(l3_loaded, ids0) - logits_of(l3, ids0)).abs().max().item()
        assert d == 0.0, f"llama3_legacy reload mismatch {d}"
        rp = l3_loaded.config.rope_parameters
        assert rp["rope_type"] == "llama3" and rp["factor"] == 8.0, rp
        # the llama3 scaling actually matters at these lengths
        plain_cfg = llama3_config(vocab)
        plain_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
        l3_plain = finish(LlamaForCausalLM(plain_cfg))
        l3_plain.load_state_dict(l3.state_dict())
        d_scal = (logits_of(l3_plain, ids0) - logits_of(l3, ids0)).abs().max().item()
        assert d_scal > 1e-3, f"llama3 scaling has no effect ({d_scal})"
        log(f"llama3 rope scaling changes logits by up to {d_scal:.4f}")
        del l3_plain
        # sharded == unsharded
        sh = load_model(mdir / "llama_sharded")
        d = (logits_of(sh, ids0) - logits_of(llama, ids0)).abs().max().item()
        assert d == 0.0, f"sharded mismatch {d}"
        n_shards = len(list((mdir / "llama_sharded").glob("model-*.safetensors")))
        assert 2 <= n_shards <= 3, n_shards
        # bf16 differs from f32 (so the fixture is meaningful)
        bf = load_model(mdir / "llama_bf16")
        d_bf = (logits_of(bf, ids0) - logits_of(llama, ids0)).abs().max().item()
        log(f"bf16 vs f32 llama logits max diff {d_bf:.4f}")
        assert d_bf > 1e-4
        del sh, bf, l3_loaded

    # ---- per-model expected outputs (always from the saved files)
    loaded = {}
    tokzs = {}
    summary = {}
    for name in specs:
        tokz = AutoTokenizer.from_pretrained(str(mdir / name))
        model = load_model(mdir / name)
        assert model.config._attn_implementation == "eager"
        loaded[name], tokzs[name] = model, tokz
        tensors, prompts = {}, []
        for i, text in enumerate(PROMPTS):
            if name in derived and i >= 1:
                continue
            ids = tokz(text)["input_ids"]
            lg = logits_of(model, ids)
            tensors[f"p{i}"] = lg.contiguous()
            prompts.append(
                {
                    "text": text,
                    "prompt_ids": ids,
                    "logits_tensor": f"p{i}",
                    "shape": list(lg.shape),
                    "last_argmax": int(torch.argmax(lg[-1])),
                    "last_logits_first8": f32list(lg[-1, :8]),
                }
            )
        dec_ids = tokz(PROMPTS[2])["input_ids"]
        chat_ids_nospecial = tokz(
            tokz.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        # apply_chat_template(tokenize=True) does not add BOS via the post-processor
        tpl_ids = tokz.apply_chat_template(CHAT_MESSAGES, tokenize=True, add_generation_prompt=True)
        if isinstance(tpl_ids, dict) or hasattr(tpl_ids, "keys"):
            tpl_ids = tpl_ids["input_ids"]
        assert list(tpl_ids) == chat_ids_nospecial, (name, tpl_ids, chat_ids_nospecial)
        chat_text = tokz.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
        (edir / name).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(edir / name / "logits.safetensors"), metadata={"format": "pt"})
        write_json(
            edir / name / "expected.json",
            {
                "model": name,
                "model_dir": f"models/{name}",
                "architecture": type(model).__name__,
                "vocab_size": vocab,
                "adds_bos": specs[name][0] == "llama",
                "logits_file": "logits.safetensors",
                "logits_dtype": "F32",
                "prompts": prompts,
                "chat": {
                    "messages": CHAT_MESSAGES,
                    "add_generation_prompt": True,
                    "rendered": chat_text,
                    "input_ids": tokz(chat_text)["input_ids"],
                    "input_ids_no_special": chat_ids_nospecial,
                },
                "decode_check": {
                    "ids": dec_ids,
                    "text": tokz.decode(dec_ids, skip_special_tokens=False),
                    "text_skip_special": tokz.decode(dec_ids, skip_special_tokens=True),
                },
            },
        )
        summary[name] = float(max(t.abs().max() for t in tensors.values()))
        log(f"{name}: prompt lens {[len(p['prompt_ids']) for p in prompts]}, max|logit| {summary[name]:.3f}")

    # ---- DeRa fixtures
    ref, al_a, al_b = loaded["llama"], loaded["llama_aligned_a"], loaded["llama_aligned_b"]
    ltok = tokzs["llama"]
    p0 = ltok(PROMPTS[0])["input_ids"]
    dera = {
        "note": "mixed logits = (1 - sum(l)) * h_ref + sum_i l_i * h_i, computed in float64 from the "
        "float32 transformers logits; log-probs are log_softmax over the full vocab; greedy = argmax, "
        "full re-forward each step, no EOS stopping, exactly 12 new tokens.",
        "prompt_text": PROMPTS[0],
        "prompt_ids": p0,
        "llama_pair": {
            "ref": "models/llama",
            "aligned": ["models/llama_aligned_a"],
            "cases": [dera_case([ref, al_a], [l], p0, ltok) for l in DERA_LAMBDAS],
        },
        "llama_three": {
            "ref": "models/llama",
            "aligned": ["models/llama_aligned_a", "models/llama_aligned_b"],
            "cases": [dera_case([ref, al_a, al_b], DERA_MULTI_LAMBDAS, p0, ltok)],
        },
    }
    g_p0 = tokzs["gpt2"](PROMPTS[0])["input_ids"]
    dera["gpt2_pair"] = {
        "ref": "models/gpt2",
        "aligned": ["models/gpt2_aligned"],
        "prompt_ids": g_p0,
        "cases": [dera_case([loaded["gpt2"], loaded["gpt2_aligned"]], [GPT2_LAMBDA], g_p0, tokzs["gpt2"])],
    }

    # weight-space merge (float32 in torch)
    merged = finish(LlamaForCausalLM(llama_config(vocab)))
    sd_r, sd_a = ref.state_dict(), al_a.state_dict()
    merged.load_state_dict(
        {k: (1.0 - MERGE_LAMBDA) * sd_r[k] + MERGE_LAMBDA * sd_a[k] for k in sd_r}
    )
    merged.eval()
    mlog = logits_of(merged, p0)
    dera["weight_merge"] = {
        "ref": "models/llama",
        "aligned": "models/llama_aligned_a",
        "lambda": MERGE_LAMBDA,
        "note": "theta = (1-l)*theta_ref + l*theta_aligned per tensor in float32. Logits of the merged "
        "model (float32) for prompt 0 at every position are tensor 'p0' [T, V] in logits_file; "
        "next_token_logits is the last row, next_token_logprobs its log_softmax (float32).",
        "logits_file": "weight_merge_logits.safetensors",
        "shape": list(mlog.shape),
        "next_token_logits": f32list(mlog[-1]),
        "next_token_logprobs": f32list(torch.log_softmax(mlog[-1], dim=-1)),
    }

    # score fixture
    resp = tokzs["gpt2"](" the quick brown fox jumps")["input_ids"][:6]  # no BOS
    assert len(resp) == 6 and all(t >= len(SPECIAL_TOKENS) for t in resp), resp
    full = p0 + resp
    h_r, h_a = logits_of(ref, full), logits_of(al_a, full)
    P = len(p0)
    rows = slice(P - 1, P - 1 + len(resp))
    lp_mix = torch.log_softmax(mix_logits([h_r[rows], h_a[rows]], [SCORE_LAMBDA]), dim=-1)
    lp_ref = torch.log_softmax(h_r[rows].to(torch.float64), dim=-1)
    tok_lp = lp_mix[torch.arange(len(resp)), torch.tensor(resp)]
    kl = (lp_mix.exp() * (lp_mix - lp_ref)).sum(-1)
    dera["score"] = {
        "ref": "models/llama",
        "aligned": ["models/llama_aligned_a"],
        "lambdas": [SCORE_LAMBDA],
        "prompt_ids": p0,
        "response_ids": resp,
        "response_text": ltok.decode(resp),
        "note": "position j scores response_ids[j] given prompt_ids + response_ids[:j] "
        "(logits row len(prompt)-1+j of one forward over prompt+response).",
        "token_logprobs": f64list(tok_lp),
        "token_kl_mix_ref": f64list(kl),
        "sum_logprob": float(tok_lp.sum()),
        "sum_kl": float(kl.sum()),
    }
    save_file({"p0": mlog.contiguous()}, str(edir / "weight_merge_logits.safetensors"), metadata={"format": "pt"})
    write_json(edir / "dera.json", dera)

    # ---- manifest
    write_json(
        out / "manifest.json",
        {
            "generator": "scripts/golden/generate_golden.py",
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "safetensors": safetensors.__version__,
                "numpy": np.__version__,
            },
            "seed": SEED,
            "vocab_size": vocab,
            "special_tokens": {s: i for i, s in enumerate(SPECIAL_TOKENS)},
            "prompts": PROMPTS,
            "models": {
                name: {
                    "dir": f"models/{name}",
                    "family": specs[name][0],
                    "adds_bos": specs[name][0] == "llama",
                    "expected": f"expected/{name}/expected.json",
                    "logits": f"expected/{name}/logits.safetensors",
                    "max_abs_logit": summary[name],
                }
                for name in specs
            },
            "llama3_legacy_current_form_config": current_cfg_l3,
        },
    )
    log("done")


if __name__ == "__main__":
    main()
