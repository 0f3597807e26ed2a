"""Drives a running `dera serve` with the official OpenAI Python client.

The same set of requests (each with its own lambda, greedy, streamed) is sent one at a time, then
by N concurrent clients. Prints completion tokens/s against the one-at-a-time run, p50/p99 time
to first token and per-token latency (gap between streamed chunks), and checks that every
concurrent output equals its one-at-a-time output (greedy decoding is batch-invariant).

    python bench.py --base-url http://127.0.0.1:PORT/v1 --clients 1,8,32 --requests 32 \
        --max-tokens 64 --lambdas 0,0.5,1,1.5 --aligned 2 --label embedded
"""

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time

from openai import OpenAI

# The prompts, one per line (shared with crates/dera/examples/bench_continuous.rs).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.txt")) as f:
    PROMPTS = [line.rstrip("\n") for line in f if line.strip()]


def percentile(xs, p):
    xs = [x for x in xs if x == x]  # a request that ended before its first token has no TTFT
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def one(client, model, req, max_tokens, stream=True):
    """One request: (text, completion tokens, ttft s, [gaps s]); without streaming the time to
    first token is the whole request's time and there are no gaps."""
    start = time.perf_counter()
    if not stream:
        out = client.completions.create(
            model=model,
            prompt=req["prompt"],
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"lambda": req["lambda"]},
        )
        return out.choices[0].text, out.usage.completion_tokens, time.perf_counter() - start, []
    stream = client.completions.create(
        model=model,
        prompt=req["prompt"],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"lambda": req["lambda"]},
    )
    text, first, last, gaps, tokens = [], None, None, [], None
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        piece = chunk.choices[0].text or ""
        if piece:
            if first is None:
                first = now - start
            else:
                gaps.append(now - last)
            last = now
            text.append(piece)
    return "".join(text), tokens or 0, first if first is not None else float("nan"), gaps


def run(client, model, reqs, clients, max_tokens, stream=True):
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda r: one(client, model, r, max_tokens, stream), reqs))
    wall = time.perf_counter() - start
    tokens = sum(r[1] for r in results)
    return {
        "clients": clients,
        "wall_s": wall,
        "tokens": tokens,
        "tok_s": tokens / wall,
        "ttft_p50_ms": 1e3 * percentile([r[2] for r in results], 50),
        "ttft_p99_ms": 1e3 * percentile([r[2] for r in results], 99),
        "tpot_p50_ms": 1e3 * percentile([g for r in results for g in r[3]], 50),
        "tpot_p99_ms": 1e3 * percentile([g for r in results for g in r[3]], 99),
        "texts": [r[0] for r in results],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="dera")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--lambdas", default="0,0.5,1,1.5")
    p.add_argument("--aligned", type=int, default=1, help="aligned models (lambda values per request)")
    p.add_argument("--label", default="")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--no-stream", action="store_true",
                   help="plain (non-streamed) requests: one response per request")
    a = p.parse_args()

    client = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=600)
    grid = [float(x) for x in a.lambdas.split(",")]
    reqs = []
    for i in range(a.requests):
        lam = [grid[(i + j) % len(grid)] for j in range(a.aligned)]
        reqs.append({"prompt": PROMPTS[i % len(PROMPTS)], "lambda": lam})

    one(client, a.model, reqs[0], 4)  # warm-up
    stream = not a.no_stream
    sequential = run(client, a.model, reqs, 1, a.max_tokens, stream)
    rows = [sequential]
    for c in [int(x) for x in a.clients.split(",")]:
        if c == 1:
            continue
        rows.append(run(client, a.model, reqs, c, a.max_tokens, stream))

    mode = "streamed" if stream else "not streamed"
    print(f"\n{a.label}: {a.requests} requests x {a.max_tokens} max tokens, greedy, {mode}, lambdas from {grid}")
    print("| clients | completion tok/s | vs one at a time | p50 / p99 TTFT ms | p50 / p99 per-token ms | outputs equal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        same = sum(x == y for x, y in zip(r["texts"], sequential["texts"]))
        print(f"| {r['clients']} | {r['tok_s']:.1f} | {r['tok_s'] / sequential['tok_s']:.2f}x | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | "
              f"{same}/{len(reqs)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": a.label, "rows": [{k: v for k, v in r.items() if k != "texts"} for r in rows]}, f, indent=1)
    bad = [r["clients"] for r in rows if r["texts"] != sequential["texts"]]
    if bad:
        print(f"outputs differ from the one-at-a-time run at {bad} clients", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
