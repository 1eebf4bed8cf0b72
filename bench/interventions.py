"""What an intervened request costs against a plain one: tokens/s of N concurrent streams
on the real gunicorn server and the demo model, medians of `--runs`, the kinds in turn:
- plain: no interventions;
- same: every stream the same two (a head ablated and a steering contrast);
- mixed: half the streams plain, half with those two (the viewer's Compare is N = 2);
- distinct: every stream a different head ablated, plus the same steering.
Interventions are hooks masked to their rows inside passes shared with everyone
(app/engine/interventions.py); a pass with any takes transformers' forward, not the lean
step, and pays the hooks' clone-and-write.

  .venv/bin/python -m bench.interventions [--model llmviz/shakespeare] [--streams 1 2 8]
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


def _scenario(kind: str, i: int) -> list[dict]:
    """Stream i's interventions in scenario `kind`."""
    if kind == "plain" or (kind == "mixed" and i % 2 == 0):
        return []
    if kind == "distinct":
        return [{"kind": "ablate_head", "layer": i // 6 % 6, "head": i % 6}, INTERVENTIONS[1]]
    return INTERVENTIONS


def _load(live: LiveServer, body: dict, streams: int, kind: str) -> float:
    """Tokens per second of `streams` concurrent streams of `body` in scenario `kind` (each
    makes exactly `max_new_tokens`: `ignore_eos`)."""

    def one(i: int) -> None:
        asked = {**body, "prompt": f"ROMEO {i}:", "interventions": _scenario(kind, i)}
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
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    body = {"model_id": args.model, "max_new_tokens": args.tokens, "temperature": 0}
    body["ignore_eos"] = True
    env = {"LLMVIZ_MODEL_ROOT": str(DEFAULT_ROOT), "LLMVIZ_MAX_BATCH": "16"}
    kinds = ("plain", "same", "mixed", "distinct")
    with LiveServer(env) as live:
        _load(live, body, 1, "same")  # warm-up: loads the model
        print(f"\n{args.model}, {args.tokens} tokens a stream, tok/s, medians of {args.runs}")
        print(f"{'streams':>7} " + " ".join(f"{k:>16}" for k in kinds))
        for streams in args.streams:
            speeds: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.runs):
                for kind in kinds:
                    if streams > 1 or kind in ("plain", "same"):
                        speeds[kind].append(_load(live, body, streams, kind))
            base = median(speeds["plain"])
            cells = [
                f"{median(v):9.1f} ({median(v) / base:.2f})" if v else f"{'-':>16}"
                for v in speeds.values()
            ]
            print(f"{streams:7d} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
