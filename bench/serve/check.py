"""A smoke check of a running `dera serve` through the official OpenAI Python client: models,
completions and chat with `extra_body={"lambda": ...}`, streaming equal to non-streaming, and
the client's error classes for bad requests. Exits 1 on the first failure.

    python check.py --base-url http://127.0.0.1:PORT/v1 --aligned 2
"""

import argparse
import sys

import openai
from openai import OpenAI


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--aligned", type=int, default=1)
    a = p.parse_args()
    c = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0)
    model = c.models.list().data[0].id
    lam = [0.5] * a.aligned

    def completion(**kw):
        return c.completions.create(model=model, prompt="What is", max_tokens=12, temperature=0,
                                    extra_body={"lambda": lam}, **kw)

    whole = completion()
    streamed = "".join(ch.choices[0].text for ch in completion(stream=True) if ch.choices)
    assert whole.choices[0].text == streamed, (whole.choices[0].text, streamed)
    assert whole.usage.completion_tokens >= 1
    other = c.completions.create(model=model, prompt="What is", max_tokens=12, temperature=0,
                                 extra_body={"lambda": [2.0] * a.aligned})
    print("lambda 0.5:", repr(whole.choices[0].text), "| lambda 2:", repr(other.choices[0].text))

    chat = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                     max_tokens=8, temperature=0, extra_body={"lambda": lam})
    chunks = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=8, temperature=0, extra_body={"lambda": lam},
                                       stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chat.choices[0].message.content == text, (chat.choices[0].message.content, text)

    for kw, err in [
        (dict(extra_body={"lambda": "strong"}), openai.BadRequestError),
        (dict(extra_body={"lambda": [1.0] * (a.aligned + 1)}), openai.BadRequestError),
        (dict(temperature=-1), openai.BadRequestError),
        (dict(top_p=2), openai.BadRequestError),
        (dict(model="no-such-model"), openai.NotFoundError),
    ]:
        args = dict(model=model, prompt="a", max_tokens=2)
        args.update(kw)
        try:
            c.completions.create(**args)
        except err as e:
            assert "message" in str(e.body), e.body
        else:
            raise AssertionError(f"{kw} was accepted")
    print("openai client check: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
