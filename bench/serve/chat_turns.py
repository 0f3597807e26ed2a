"""Time of each turn of one growing chat against `dera serve` (raw HTTP on 127.0.0.1, no
client library): turn k sends the whole conversation so far (every earlier question and
answer) plus a new question, so its prompt continues the previous turn's. With the prompt
cache (`--prompt-cache-mb`, on by default) a turn prefills only what it adds; with
`--prompt-cache-mb 0` it prefills the whole conversation again. With `system` as the fourth
argument, each request is instead a new chat: one long system message shared by all, then
one question (a prompt that shares its beginning with the earlier ones).

    python bench/serve/chat_turns.py PORT [TURNS] [MAX_TOKENS] [turns|system]

Greedy, `max_tokens` small (default 8) so that the prefill dominates. Prints one line per turn:
prompt tokens, milliseconds, then the total.
"""
import json
import sys
import time
import urllib.request

QUESTIONS = [
    "Tell me about the history of the printing press and how it changed the spread of ideas.",
    "Which inventions before it made it possible, and who built on it afterwards?",
    "How did it affect religion, science and politics in the following two centuries?",
    "Compare that with the effect of the internet on the same three areas today.",
    "What would you expect the next comparable change to be, and why?",
    "Summarise the whole conversation in a few sentences.",
]


def chat(port, messages, max_tokens):
    body = json.dumps({
        "model": "dera", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
    }).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        out = json.load(r)
    return out, (time.perf_counter() - start) * 1e3


SYSTEM = ("You are a patient historian of technology. Answer in plain words, give dates where "
          "you know them, name the people involved, say when a point is disputed, and keep "
          "each answer short enough to read in a minute. Prefer primary sources over legends.")


def main():
    port = int(sys.argv[1])
    turns = int(sys.argv[2]) if len(sys.argv) > 2 else len(QUESTIONS)
    max_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    shared = len(sys.argv) > 4 and sys.argv[4] == "system"
    messages, total = [], 0.0
    for k in range(turns):
        if shared:
            messages = [{"role": "system", "content": SYSTEM}]
        messages.append({"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]})
        out, ms = chat(port, messages, max_tokens)
        total += ms
        messages.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})
        print(f"turn {k + 1}: {out['usage']['prompt_tokens']} prompt tokens, {ms:.1f} ms")
    print(f"total {total:.1f} ms")


if __name__ == "__main__":
    main()
