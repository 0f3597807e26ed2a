"""Greedy decoding ms/token of a random SmolLM2-135M-shaped Llama with transformers, alone and
as a two-model DeRa mixture h = (1 - l) * h_ref + l * h_al, the torch side of run.sh.

ms/token: wall time from the first mix after the prefill to the last chosen token, divided by
the tokens generated (NEW mixes/argmaxes and NEW - 1 forward steps of every model), best of REPS
runs after a warm-up run -- the definition of dera's Timing::decode_ms_per_token.

    python torch_dera.py [--prompt 32] [--new 64] [--reps 3] [--threads 2] [--layers 30] [--lambda 0.5]
"""

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_model(layers, seed):
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(torch.float32).eval()


@torch.no_grad()
def decode(models, lam, prompt, new):
    """Returns (ms/token, tokens)."""
    ids = torch.tensor([prompt])
    pkv, logits = [], []
    for m in models:
        out = m(input_ids=ids, use_cache=True)
        pkv.append(out.past_key_values)
        logits.append(out.logits[:, -1, :])
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
            logits.append(out.logits[:, -1, :])
    return (time.perf_counter() - start) * 1e3 / new, tokens


def best(models, lam, prompt, new, reps):
    decode(models, lam, prompt, 4)  # warm-up
    return min(decode(models, lam, prompt, new)[0] for _ in range(max(reps, 1)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--lambda", dest="lam", type=float, default=0.5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ref = make_model(a.layers, 1)
    al = make_model(a.layers, 2)
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(1, 49152, (a.prompt,), generator=g).tolist()
    single = best([ref], a.lam, prompt, a.new, a.reps)
    dera = best([ref, al], a.lam, prompt, a.new, a.reps)
    print(
        f"torch {torch.__version__} transformers threads={torch.get_num_threads()} prompt={a.prompt} "
        f"new={a.new} layers={a.layers}: single {single:.2f} ms/token, DeRa(2) {dera:.2f} ms/token, "
        f"ratio {dera / single:.2f}"
    )
    print(f"RESULT torch single_ms={single:.3f} dera2_ms={dera:.3f}")


if __name__ == "__main__":
    main()
