"""What an intervened request costs against a plain one: tokens/s of N concurrent streams,
all plain or all intervened (a head ablated and a steering contrast), on the real gunicorn
server and the demo model; medians of `--runs`, the two kinds alternating.

An intervened request runs in a group of its own (app/engine/interventions.py): at one
stream it pays only the hooks; at eight it also loses batching with the others.

  .venv/bin/python -m bench.interventions [--model llmviz/shakespeare] [--streams 1 8]
"""

from __future__ import annotations

import argparse
import threading
import time

import requests

from bench.common import DEFAULT_ROOT, LiveServer, median

INTERVENTIONS = [
    {"kind": "ablate_head", "layer": 1, "head": 2},
    {"kind": "steer", "layer": 3, "contrast": ["Love", "Hate"], "scale": 4.0},
]


def _load(live: LiveServer, body: dict, streams: int) -> float:
    """Tokens per second of `streams` concurrent streams of `body` (each makes exactly
    `max_new_tokens`: `ignore_eos`)."""

    def one(i: int) -> None:
        asked = {**body, "prompt": f"ROMEO {i}:"}
        with requests.post(live.url("/generate/stream"), json=asked, stream=True, timeout=600) as r:
            r.raise_for_status()
            for _ in r.iter_content(chunk_size=None):
                pass

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams * body["max_new_tokens"] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llmviz/shakespeare")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    body = {"model_id": args.model, "max_new_tokens": args.tokens, "temperature": 0}
    body["ignore_eos"] = True
    env = {"LLMVIZ_MODEL_ROOT": str(DEFAULT_ROOT), "LLMVIZ_MAX_BATCH": "16"}
    with LiveServer(env) as live:
        _load(live, {**body, "interventions": INTERVENTIONS}, 1)  # warm-up: loads the model
        print(f"\n{args.model}, {args.tokens} tokens a stream, medians of {args.runs}")
        print(f"{'streams':>7} {'plain tok/s':>12} {'intervened':>11} {'ratio':>6}")
        for streams in args.streams:
            plain, intervened = [], []
            for _ in range(args.runs):
                plain.append(_load(live, body, streams))
                intervened.append(_load(live, {**body, "interventions": INTERVENTIONS}, streams))
            a, b = median(plain), median(intervened)
            print(f"{streams:7d} {a:12.1f} {b:11.1f} {b / a:6.2f}", flush=True)


if __name__ == "__main__":
    main()
