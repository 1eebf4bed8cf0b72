"""A model split by LLMVIZ_DEVICE_MAP against the same model loaded whole: the worker's
memory and the decoding speed, over HTTP from the real gunicorn server.

GPT-2 small's shape (random weights, bench/models/gpt2-small-shape, built on first use),
float32 on the CPU. Each configuration runs in a server of its own, one after the other:
a warm-up generation, then `--runs` greedy generations of `--tokens` tokens; the worker's
resident memory (VmRSS, and its anonymous and file-backed parts) is read after them.
Prints tok/s (median), the ratio to the whole model, and the memory.

  .venv/bin/python -m bench.device_map [--tokens 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import requests

from bench.common import DEFAULT_ROOT, LiveServer, ensure_gpt2_small, median

CONFIGS = {
    "whole (packed)": {},
    "whole, unpacked": {"LLMVIZ_PACKED_WEIGHTS": "0"},
    "cpu 300MB, rest on disk": {
        "LLMVIZ_DEVICE_MAP": "auto",
        "LLMVIZ_MAX_MEMORY": '{"cpu": "300MB"}',
    },
    "cpu 150MB: all on disk": {
        "LLMVIZ_DEVICE_MAP": "auto",
        "LLMVIZ_MAX_MEMORY": '{"cpu": "150MB"}',
    },
}


def _memory(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(status.split(f"{key}:")[1].split()[0]) * 1024
        for key in ("VmRSS", "RssAnon", "RssFile")
    }


def _run(env: dict[str, str], tokens: int, runs: int) -> dict[str, object]:
    with LiveServer({"LLMVIZ_MODEL_ROOT": str(DEFAULT_ROOT), **env}) as live:
        body = {"model_id": "gpt2-small-shape", "prompt": "The quick brown fox", "temperature": 0}
        requests.post(live.url("/generate"), json={**body, "max_new_tokens": 4}, timeout=600)
        speeds = []
        for _ in range(runs):
            started = time.perf_counter()
            response = requests.post(
                live.url("/generate"), json={**body, "max_new_tokens": tokens}, timeout=600
            )
            response.raise_for_status()
            speeds.append(tokens / (time.perf_counter() - started))
        listed = live.stats("gpt2-small-shape")
        memory = _memory(live.worker_pids()[0])
    placement = listed["device_map"] or {"bytes": {listed["device"]: listed["memory_bytes"]}}
    return {"tok_s": median(speeds), "memory": memory, "placed": placement["bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    ensure_gpt2_small()
    results = {name: _run(env, args.tokens, args.runs) for name, env in CONFIGS.items()}
    base = results["whole (packed)"]
    mb = 1e6
    print(
        f"\n{'configuration':28} {'tok/s':>7} {'÷ whole':>8} {'VmRSS':>8} {'anon':>8} "
        f"{'file':>8}  weights placed (MB)"
    )
    for name, got in results.items():
        memory = got["memory"]
        placed = ", ".join(f"{d} {b / mb:.0f}" for d, b in got["placed"].items())
        print(
            f"{name:28} {got['tok_s']:7.1f} {got['tok_s'] / base['tok_s']:8.3f} "
            f"{memory['VmRSS'] / mb:8.0f} {memory['RssAnon'] / mb:8.0f} "
            f"{memory['RssFile'] / mb:8.0f}  {placed}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
