"""What fronting a remote model costs: the same stream read straight from the remote, and
through this server with the model in LLMVIZ_REMOTE_MODELS.

The remote is this project's own server (the demo model `llmviz/shakespeare` by default,
on its own port); the front is a second one on the same machine. Each run streams
`/generate/stream` with `details` and 5 alternatives (greedy, `--tokens` tokens): straight
from the remote, then through the front, alternating, `--runs` times each after a warm-up.
Prints the median first-token time and time per token of both and the difference.

  .venv/bin/python -m bench.remote_front [--model llmviz/shakespeare] [--tokens 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import json

from bench.common import DEFAULT_ROOT, LiveServer, median, stream_timing
from tests.support.sse_client import SSEEvent


def _stream(live: LiveServer, body: dict) -> tuple[float, float]:
    """(ms to the first token event, ms per token after it)."""
    first, per, count = stream_timing(live.url("/generate/stream"), body, _is_token)
    assert count == body["max_new_tokens"], count
    return first, per


def _is_token(event: SSEEvent) -> bool:
    return event.event == "token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llmviz/shakespeare")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    body = {
        "prompt": "ROMEO:",
        "max_new_tokens": args.tokens,
        "temperature": 0,
        "ignore_eos": True,
        "details": True,
        "top_logprobs": 5,
    }
    with LiveServer({"LLMVIZ_MODEL_ROOT": str(DEFAULT_ROOT)}) as far:
        remotes = {"far": {"url": far.url("/v1"), "model": args.model, "engine": "llmviz"}}
        front_env = {
            "LLMVIZ_MODEL_ROOT": str(DEFAULT_ROOT),
            "LLMVIZ_REMOTE_MODELS": json.dumps(remotes),
        }
        with LiveServer(front_env) as front:
            direct = {**body, "model_id": args.model}
            fronted = {**body, "model_id": "far"}
            _stream(far, direct), _stream(front, fronted)  # warm-up: loads, connections
            results: dict[str, list[tuple[float, float]]] = {"direct": [], "front": []}
            for _ in range(args.runs):
                results["direct"].append(_stream(far, direct))
                results["front"].append(_stream(front, fronted))
    print(
        f"\n{args.model}, {args.tokens} tokens, details with 5 alternatives, medians of {args.runs}"
    )
    print(f"{'path':8} {'first token (ms)':>17} {'per token (ms)':>15}")
    shown = {}
    for name, runs in results.items():
        shown[name] = (median([r[0] for r in runs]), median([r[1] for r in runs]))
        print(f"{name:8} {shown[name][0]:17.1f} {shown[name][1]:15.2f}")
    first = shown["front"][0] - shown["direct"][0]
    per = shown["front"][1] - shown["direct"][1]
    print(f"{'added':8} {first:17.1f} {per:15.2f}")


if __name__ == "__main__":
    main()
