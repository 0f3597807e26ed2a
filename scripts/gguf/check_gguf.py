#!/usr/bin/env python3
"""Compare dera with transformers on one GGUF file: tokenization, next-token log-probs (max
absolute difference), greedy tokens, plain and through the file's chat template; print dera's
load time and decode speed. Exit status 1 when they disagree beyond --tol or on a token.

Usage: check_gguf.py --gguf FILE --dera PATH/TO/dera [--new-tokens 16] [--tol 2e-3]
                     [--dera-arg=--dtype --dera-arg=f32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.\n",
    "  Numbers 12345, symbols #@! and café — done",
]
CHAT = "What is the tallest mountain in the world?"


def dera(binary: str, *args: str) -> dict:
    out = subprocess.run([binary, *args, "--format", "json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--dera", required=True)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--tol", type=float, default=2e-3,
                    help="largest next-token log-prob difference accepted (default 2e-3: the "
                         "Q8_0/Q4_0 kernels take the activations in 16-bit blocks; --dtype f32 "
                         "holds to 1e-4)")
    ap.add_argument("--dera-arg", action="append", default=[],
                    help="an extra option for dera (repeat: --dera-arg=--dtype --dera-arg=f32)")
    a = ap.parse_args()
    path = Path(a.gguf)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    print(f"transformers load: {time.time() - t0:.1f} s")
    ok = True
    cases = [(p, False) for p in PROMPTS] + [(CHAT, True)]
    for text, chat in cases:
        if chat:
            rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(text)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=a.new_tokens, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        flag = ["--chat"] if chat else []
        got = dera(a.dera, "logprobs", "--ref", str(path), "--prompt", text, *flag, *a.dera_arg)
        gen = dera(a.dera, "generate", "--ref", str(path), "--prompt", text, *flag, "--greedy",
                   "--max-new-tokens", str(a.new_tokens), *a.dera_arg)
        same_ids = got["prompt_ids"] == ids
        diff = max(abs(x - float(y)) for x, y in zip(got["logprobs"], lp.tolist()))
        # dera stops at EOS; compare the tokens it produced.
        n = len(gen["tokens"])
        same_greedy = gen["tokens"] == greedy[:n] and (n == a.new_tokens or gen["finish_reason"] != "length")
        ok &= same_ids and diff <= a.tol and same_greedy
        t = gen["timing"]
        print(f"{'chat ' if chat else ''}{text!r}: {len(ids)} prompt tokens, ids equal: {same_ids}, "
              f"max |log-prob diff| {diff:.2e}, greedy equal: {same_greedy} ({n} tokens: {tok.decode(gen['tokens'])!r}); "
              f"dera load {t['load_ms']:.0f} ms, prefill {t['prefill_ms']:.0f} ms, decode {t['decode_ms_per_token']:.1f} ms/token")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
