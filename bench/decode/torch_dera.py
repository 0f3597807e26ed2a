"""Greedy decoding ms/token with PyTorch + transformers, one model and a two-model DeRa mixture
h = (1 - l) * h_ref + l * h_al: the torch side of run.sh.

ms/token: wall time from the first mix after the prefill to the last chosen token, divided by
the tokens generated (NEW mixes/argmaxes and NEW - 1 forward steps of every model), best of REPS
runs after a warm-up run -- the definition of dera's Timing::decode_ms_per_token.

    python torch_dera.py --ref DIR --aligned DIR [--dtype f32|bf16] [--prompt 32] [--new 64]
                         [--reps 3] [--threads 2] [--lambda 0.5]
"""

import argparse
import resource
import time

import torch
from transformers import LlamaForCausalLM


@torch.no_grad()
def decode(models, lam, prompt, new):
    """Returns (ms/token, tokens)."""
    ids = torch.tensor([prompt])
    pkv, logits = [], []
    for m in models:
        out = m(input_ids=ids, use_cache=True)
        pkv.append(out.past_key_values)
        logits.append(out.logits[:, -1, :].float())
    tokens = []
    start = time.perf_counter()
    for step in range(new):
        if len(models) == 1:
            h = logits[0]
        else:
            h = (1.0 - lam) * logits[0] + lam * logits[1]
        tok = int(torch.argmax(h, dim=-1))
        tokens.append(tok)
        if step + 1 == new:
            break
        nxt = torch.tensor([[tok]])
        logits = []
        for i, m in enumerate(models):
            out = m(input_ids=nxt, past_key_values=pkv[i], use_cache=True)
            pkv[i] = out.past_key_values
            logits.append(out.logits[:, -1, :].float())
    return (time.perf_counter() - start) * 1e3 / new, tokens


def best(models, lam, prompt, new, reps):
    decode(models, lam, prompt, 4)  # warm-up
    return min(decode(models, lam, prompt, new)[0] for _ in range(max(reps, 1)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref", required=True)
    p.add_argument("--aligned", required=True)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lambda", dest="lam", type=float, default=0.5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    start = time.perf_counter()
    ref = LlamaForCausalLM.from_pretrained(a.ref, dtype=dtype).eval()
    al = LlamaForCausalLM.from_pretrained(a.aligned, dtype=dtype).eval()
    load_ms = (time.perf_counter() - start) * 1e3
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(1, ref.config.vocab_size, (a.prompt,), generator=g).tolist()
    single = best([ref], a.lam, prompt, a.new, a.reps)
    dera = best([ref, al], a.lam, prompt, a.new, a.reps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"torch {torch.__version__} {a.dtype} threads={torch.get_num_threads()} prompt={a.prompt} "
        f"new={a.new}: single {single:.2f} ms/token, DeRa(2) {dera:.2f} ms/token, "
        f"ratio {dera / single:.2f}"
    )
    print(f"RESULT torch format={a.dtype} threads={a.threads} single_ms={single:.3f} "
          f"dera2_ms={dera:.3f} load_ms={load_ms:.1f} peak_rss_mb={rss:.1f}")


if __name__ == "__main__":
    main()
