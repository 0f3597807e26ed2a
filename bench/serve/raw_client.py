"""A light load generator for `dera serve`: asyncio and raw HTTP/1.1 on 127.0.0.1, no client
library, so the client's own CPU use (the official `openai` client parses every streamed chunk
into objects, about one core at 3,000 chunks/s) does not compete with the server on a 2-core
machine. Same prompts and lambda grid as bench.py; greedy, streamed.

    python bench/serve/raw_client.py PORT [CONCURRENCY,...] [REQUESTS] [MAX_TOKENS]

One lambda per aligned model (the count from `/v1/models`). Prints, per concurrency:
completion tokens (from each stream's usage chunk), wall seconds, tokens/s, and the chunks
that carried them (a server that fell behind sends the text of several tokens in one chunk);
exits 1 if a request was refused. With SERVER_PID set (the server's process id, Linux), also
where the CPU went: the server's and this client's core time per completion token over the
same run (`/proc/PID/stat` and the client's own process time), and the cores used in all.
"""
import asyncio
import json
import os
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the prompts)

GRID = [0, 0.5, 1, 1.5, 2]
ALIGNED = 2
MAX_TOKENS = 64
REFUSED = []


async def one(port, i):
    body = json.dumps({
        "model": "dera", "prompt": bench.PROMPTS[i % len(bench.PROMPTS)], "max_tokens": MAX_TOKENS,
        "temperature": 0, "lambda": [GRID[(i + j) % 5] for j in range(ALIGNED)], "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body))
    w.write(head + body)
    await w.drain()
    data = await r.read()
    w.close()
    if not data.startswith(b"HTTP/1.1 200"):
        REFUSED.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
    usage = re.search(rb'"completion_tokens":(\d+)', data)
    return (int(usage.group(1)) if usage else 0), data.count(b'"text"')


async def run(port, n, conc):
    sem = asyncio.Semaphore(conc)

    async def limited(i):
        async with sem:
            return await one(port, i)

    start = time.perf_counter()
    got = await asyncio.gather(*[limited(i) for i in range(n)])
    return sum(t for t, _ in got), sum(c for _, c in got), time.perf_counter() - start


def server_cpu_s(pid):
    """User + system CPU seconds of process `pid` so far (Linux `/proc/PID/stat`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    global ALIGNED, MAX_TOKENS
    port = int(sys.argv[1])
    levels = [int(c) for c in (sys.argv[2] if len(sys.argv) > 2 else "1,8,32").split(",")]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    MAX_TOKENS = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as resp:
        ALIGNED = json.load(resp)["data"][0]["aligned_models"]
    pid = os.environ.get("SERVER_PID")
    for conc in levels:
        s0, c0 = (server_cpu_s(pid) if pid else 0.0), time.process_time()
        tokens, chunks, wall = asyncio.run(run(port, n, conc))
        s1, c1 = (server_cpu_s(pid) if pid else 0.0), time.process_time()
        line = (f"{conc} clients: {tokens} tokens in {wall:.3f} s = {tokens / wall:.1f} tokens/s"
                f" ({chunks} chunks)")
        if pid and tokens:
            per = 1e6 / tokens
            line += (f"; core time per token: server {(s1 - s0) * per:.0f} us, client"
                     f" {(c1 - c0) * per:.0f} us; {((s1 - s0) + (c1 - c0)) / wall:.2f} cores busy")
        print(line)
    if REFUSED:
        print(f"{len(REFUSED)} request(s) refused, first: {REFUSED[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
