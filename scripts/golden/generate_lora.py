#!/usr/bin/env python3
"""Generate the LoRA golden fixtures under tests/fixtures/lora/.

Bases are the tiny random Llama and Qwen2 checkpoints of tests/fixtures/golden/models (read,
never changed). For each base, PEFT LoRA adapters with several ranks, target sets (attention,
attention + MLP, a regex), rslora and random non-zero lora_B are created with `peft` and saved
with `save_pretrained` (safetensors) under tests/fixtures/lora/adapters/. The expected values
are computed with transformers + peft loading those saved folders (float32, eager attention):

- next-token log-probs of the DeRa mixture softmax((1 - sum l) h_ref + sum l_i h_i) after a
  prompt, where h_i are the logits of base + adapter i (or of a full aligned checkpoint), at
  several lambdas, and the greedy continuation (full forward every step, no EOS stop);
- next-token log-probs of the weight-space merge W_ref + sum_i l_i * scale_i * B_i A_i
  (full checkpoints mixed with coefficients as dera merge does).

Usage: python scripts/golden/generate_lora.py [--out tests/fixtures/lora]
Environment: scripts/golden/requirements.txt (torch, transformers, peft pinned).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
BASES = ROOT / "tests/fixtures/golden/models"
LAMBDAS = [0.0, 0.5, 1.0, 2.0]
MERGE_LAMBDAS = [0.5, 2.0]
GREEDY_NEW_TOKENS = 8
GREEDY_MIN_MARGIN = 0.01
B_STD = 0.2
SPECIALS = 3  # ids 0..2 are special tokens in the golden tokenizer

PROMPT = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]  # "Hello world" bytes ~ ids

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]

# name: (base, seed, LoraConfig kwargs)
ADAPTERS = {
    "llama_attn_r4": ("llama", 11, dict(r=4, lora_alpha=8, target_modules=ATTN)),
    "llama_all_r8_rslora": (
        "llama",
        12,
        dict(r=8, lora_alpha=16, use_rslora=True, target_modules=ATTN + MLP),
    ),
    "llama_mlp_r2": ("llama", 13, dict(r=2, lora_alpha=3, target_modules=["gate_proj", "up_proj"])),
    "qwen2_regex_r3": (
        "qwen2",
        14,
        dict(
            r=3,
            lora_alpha=6,
            target_modules=r"model\.layers\.1\.(self_attn\.(q|v)_proj|mlp\.down_proj)",
        ),
    ),
    "qwen2_all_r16": ("qwen2", 15, dict(r=16, lora_alpha=8, target_modules=ATTN + MLP)),
    # GPT-2's Conv1D layers ([in, out]; fused q/k/v in c_attn): fan_in_fan_out
    "gpt2_r4": (
        "gpt2",
        16,
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    ),
}

# DeRa groups: (name, base, aligned list (adapter names or "full:<model>"), lambda vectors)
GROUPS = [
    ("llama_attn_r4", "llama", ["llama_attn_r4"], [[l] for l in LAMBDAS]),
    ("llama_all_r8_rslora", "llama", ["llama_all_r8_rslora"], [[l] for l in LAMBDAS]),
    ("qwen2_regex_r3", "qwen2", ["qwen2_regex_r3"], [[l] for l in LAMBDAS]),
    ("qwen2_all_r16", "qwen2", ["qwen2_all_r16"], [[l] for l in LAMBDAS]),
    ("gpt2_r4", "gpt2", ["gpt2_r4"], [[l] for l in LAMBDAS]),
    ("llama_two_adapters", "llama", ["llama_attn_r4", "llama_mlp_r2"], [[0.5, 0.75], [1.0, -0.5]]),
    ("llama_adapter_and_full", "llama", ["llama_all_r8_rslora", "full:llama_aligned_a"], [[0.5, 0.5], [1.5, 0.25]]),
]

# Weight-space merges: (name, base, aligned list, lambdas)
MERGES = [
    ("llama_attn_r4", "llama", ["llama_attn_r4"], [MERGE_LAMBDAS[0]]),
    ("llama_all_r8_rslora", "llama", ["llama_all_r8_rslora"], [MERGE_LAMBDAS[1]]),
    ("qwen2_regex_r3", "qwen2", ["qwen2_regex_r3"], [MERGE_LAMBDAS[1]]),
    ("qwen2_all_r16", "qwen2", ["qwen2_all_r16"], [MERGE_LAMBDAS[0]]),
    ("llama_adapter_and_full", "llama", ["llama_all_r8_rslora", "full:llama_aligned_a"], [0.5, 0.5]),
    ("gpt2_r4", "gpt2", ["gpt2_r4"], [MERGE_LAMBDAS[1]]),
]


def log(msg: str) -> None:
    print(f"[lora] {msg}", file=sys.stderr, flush=True)


def load(path: Path):
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def make_adapter(name: str, out: Path) -> None:
    base, seed, kwargs = ADAPTERS[name]
    torch.manual_seed(seed)
    model = get_peft_model(load(BASES / base), LoraConfig(lora_dropout=0.0, bias="none", **kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * B_STD)
    model.save_pretrained(str(out / name))  # safetensors by default
    (out / name / "README.md").unlink(missing_ok=True)
    cfg_path = out / name / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = f"tests/fixtures/golden/models/{base}"  # not this machine's path
    if isinstance(cfg["target_modules"], list):
        cfg["target_modules"] = sorted(cfg["target_modules"])  # a set in peft: fix the order
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def aligned_model(spec: str, base: str, adapters: Path):
    if spec.startswith("full:"):
        return load(BASES / spec[5:])
    m = PeftModel.from_pretrained(load(BASES / base), str(adapters / spec))
    m.eval()
    return m


@torch.no_grad()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].to(torch.float64)


def mix(hs: list[torch.Tensor], lambdas: list[float]) -> torch.Tensor:
    out = (1.0 - sum(lambdas)) * hs[0]
    for l, h in zip(lambdas, hs[1:]):
        out = out + l * h
    return torch.log_softmax(out, dim=-1)


def dera_case(models: list, lambdas: list[float]) -> dict:
    lp = mix([last_logits(m, PROMPT) for m in models], lambdas)
    seq, new, margins = list(PROMPT), [], []
    for _ in range(GREEDY_NEW_TOKENS):
        step = mix([last_logits(m, seq) for m in models], lambdas)
        top2 = torch.topk(step, 2)
        nxt = int(top2.indices[0])
        new.append(nxt)
        margins.append(float(top2.values[0] - top2.values[1]))
        seq.append(nxt)
    if min(margins) < GREEDY_MIN_MARGIN or any(t < SPECIALS for t in new):
        log(f"WARNING: fragile greedy case {lambdas}: margin {min(margins):.2e}, ids {new}")
    return {
        "lambdas": lambdas,
        "next_token_logprobs": [float(x) for x in lp.tolist()],
        "greedy_new_ids": new,
        "greedy_min_margin": min(margins),
    }


@torch.no_grad()
def merged_logprobs(base: str, aligned: list[str], lambdas: list[float], adapters: Path) -> list[float]:
    """W = c_ref W_ref + sum_full c_i W_i + sum_adapters l_i * scale_i * B_i A_i (float32)."""
    ref = load(BASES / base)
    c_ref = 1.0 - sum(l for s, l in zip(aligned, lambdas) if s.startswith("full:"))
    state = {k: v.clone() * c_ref for k, v in ref.state_dict().items()}
    for spec, lam in zip(aligned, lambdas):
        if spec.startswith("full:"):
            other = load(BASES / spec[5:]).state_dict()
            for k in state:
                state[k] = state[k] + lam * other[k]
        else:
            pm = aligned_model(spec, base, adapters)
            for name, mod in pm.base_model.model.named_modules():
                if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                    delta = mod.get_delta_weight("default")  # scale * B @ A
                    key = f"{name}.weight"
                    state[key] = state[key] + lam * delta
    model = load(BASES / base)
    model.load_state_dict(state)
    return [float(x) for x in torch.log_softmax(last_logits(model, PROMPT), dim=-1).tolist()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/lora"))
    args = ap.parse_args()
    out = Path(args.out)
    adapters = out / "adapters"
    if adapters.exists():
        shutil.rmtree(adapters)
    adapters.mkdir(parents=True)
    torch.set_num_threads(1)
    for name in ADAPTERS:
        make_adapter(name, adapters)
        log(f"adapter {name}")
    groups = []
    for name, base, aligned, lambda_sets in GROUPS:
        models = [load(BASES / base)] + [aligned_model(s, base, adapters) for s in aligned]
        cases = [dera_case(models, ls) for ls in lambda_sets]
        groups.append(
            {
                "name": name,
                "ref": f"golden/models/{base}",
                "aligned": [
                    f"golden/models/{s[5:]}" if s.startswith("full:") else f"lora/adapters/{s}"
                    for s in aligned
                ],
                "cases": cases,
            }
        )
        log(f"group {name}: min margins {[round(c['greedy_min_margin'], 4) for c in cases]}")
    merges = []
    for name, base, aligned, lambdas in MERGES:
        merges.append(
            {
                "name": name,
                "ref": f"golden/models/{base}",
                "aligned": [
                    f"golden/models/{s[5:]}" if s.startswith("full:") else f"lora/adapters/{s}"
                    for s in aligned
                ],
                "lambdas": lambdas,
                "next_token_logprobs": merged_logprobs(base, aligned, lambdas, adapters),
            }
        )
    expected = {
        "note": "generated by scripts/golden/generate_lora.py; paths are relative to tests/fixtures",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "prompt_ids": PROMPT,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "groups": groups,
        "merges": merges,
    }
    with open(out / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    log("done")


if __name__ == "__main__":
    main()
