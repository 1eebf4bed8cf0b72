"""Streaming and liveness figures for one server, against in-process transformers.

Measures, on GPT-2 small's shape (random weights) unless --model is given:
- time to first streamed token, next to the prefill (one forward pass) alone;
- a single stream's rate, next to in-process `model.generate` on the same model;
- how fast a client disconnect frees the engine;
- /health latency while a 256-token /generate runs.

Run from the repository root:  .venv/bin/python -m bench.stream_bench
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time

import requests
import torch

from bench.common import LiveServer, ensure_gpt2_small, median, percentile, prompt_of, wait_for
from tests.support.sse_client import SSEEvent, stream_events


def in_process(path, prompt: str, new_tokens: int, runs: int) -> dict:
    """Prefill time and `generate` rate with transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    prefill, prefill_last, rates = [], [], []
    with torch.inference_mode():
        model(ids)  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            model(ids, use_cache=True)
            prefill.append(time.perf_counter() - started)
            # What the server does: project only the last position onto the vocabulary.
            started = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            prefill_last.append(time.perf_counter() - started)
            started = time.perf_counter()
            model.generate(
                ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
            rates.append(new_tokens / (time.perf_counter() - started))
    return {
        "prompt_tokens": ids.shape[1],
        "prefill_s": median(prefill),
        "prefill_last_s": median(prefill_last),
        "rate": median(rates),
    }


def stream_once(live: LiveServer, body: dict) -> tuple[float, float, int]:
    """(seconds to first token, tokens per second over the whole request, token events)."""
    started = time.perf_counter()
    first = None
    count = 0
    with requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=600) as r:
        for event in stream_events(r):
            if isinstance(event, SSEEvent):
                first = first or time.perf_counter()
                count += 1
    total = time.perf_counter() - started
    return first - started, body["max_new_tokens"] / total, count


def disconnect_delay(live: LiveServer, model_id: str, prompt: str) -> tuple[float, int]:
    """Seconds from the client closing its socket to the engine having no active job."""
    body = {"model_id": model_id, "prompt": prompt, "max_new_tokens": 512}
    body.update(temperature=0, ignore_eos=True, return_full_text=False)
    before = _stats(live, model_id)["generated_tokens"]
    response = requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=600)
    events = stream_events(response)
    for _ in range(5):
        next(events)
    response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
    closed = time.perf_counter()
    response.close()
    wait_for(lambda: _stats(live, model_id)["active"] == 0, timeout=60, interval=0.002)
    return time.perf_counter() - closed, _stats(live, model_id)["generated_tokens"] - before


def health_under_generation(live: LiveServer, model_id: str, new_tokens: int) -> dict:
    """/health latencies (ms) sampled while a long /generate runs, and when idle."""
    idle = [_health_ms(live) for _ in range(50)]
    body = {"model_id": model_id, "prompt": "Hello", "max_new_tokens": new_tokens}
    body.update(temperature=0, ignore_eos=True)
    done = threading.Event()

    def generate():
        requests.post(live.url("/generate"), json=body, timeout=600).raise_for_status()
        done.set()

    threading.Thread(target=generate, daemon=True).start()
    wait_for(lambda: _stats(live, model_id)["active"] == 1, timeout=60)
    busy = []
    while not done.is_set():
        busy.append(_health_ms(live))
        done.wait(0.01)
    return {
        "idle_p50_ms": median(idle),
        "busy_samples": len(busy),
        "busy_p50_ms": median(busy),
        "busy_p99_ms": percentile(busy, 99),
        "busy_max_ms": max(busy),
    }


def _health_ms(live: LiveServer) -> float:
    started = time.perf_counter()
    requests.get(live.url("/health"), timeout=10).raise_for_status()
    return (time.perf_counter() - started) * 1000


def _stats(live: LiveServer, model_id: str) -> dict:
    loaded = requests.get(live.url("/models"), timeout=10).json()["loaded"]
    return next(m for m in loaded if m["model_id"] == model_id)


def main() -> None:
    """Run every measurement and print the figures with their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    path = ensure_gpt2_small()
    model_id = path.name
    from transformers import AutoTokenizer

    prompt = prompt_of(AutoTokenizer.from_pretrained(path), args.prompt_tokens)
    baseline = in_process(path, prompt, args.new_tokens, args.runs)

    env = {"LLMVIZ_MODEL_ROOT": str(path.parent), "LLMVIZ_DEFAULT_MODEL": model_id}
    with LiveServer(env) as live:
        body = {"model_id": model_id, "prompt": prompt, "temperature": 0, "ignore_eos": True}
        body["return_full_text"] = False
        stream_once(live, {**body, "max_new_tokens": 2})  # load and warm up
        ttft = [stream_once(live, {**body, "max_new_tokens": 1})[0] for _ in range(args.runs)]
        rates = [
            stream_once(live, {**body, "max_new_tokens": args.new_tokens})[1]
            for _ in range(args.runs)
        ]
        delays = [disconnect_delay(live, model_id, prompt) for _ in range(args.runs)]
        health = health_under_generation(live, model_id, 256)

    figures = {
        "model": model_id,
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": baseline["prompt_tokens"],
        "new_tokens": args.new_tokens,
        "prefill_ms_in_process": baseline["prefill_s"] * 1000,
        "prefill_ms_in_process_last_logits": baseline["prefill_last_s"] * 1000,
        "ttft_ms_server_stream": median(ttft) * 1000,
        "generate_tok_s_in_process": baseline["rate"],
        "stream_tok_s_server": median(rates),
        "stream_vs_generate": median(rates) / baseline["rate"],
        "disconnect_to_idle_ms": median([d for d, _ in delays]) * 1000,
        "tokens_after_5_events": median([n for _, n in delays]),
        **{f"health_{k}": v for k, v in health.items()},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:32} {value:.3f}" if isinstance(value, float) else f"{key:32} {value}")


if __name__ == "__main__":
    main()
