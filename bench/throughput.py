"""Batching throughput: the real gunicorn server against in-process `model.generate`.

In one run, on the same model and machine:
- in-process `model.generate` at batch 1/4/8/16 (greedy, fixed length);
- the server with 1/4/8/16 concurrent streams: aggregate tokens/s, time to first
  token, p50/p99 gap between tokens, and /health latency under that load;
- a request joining 7 running streams: its first-token time against its prefill
  time plus two decoding steps.

Run from the repository root:  .venv/bin/python -m bench.throughput
GPU:  .venv/bin/python -m bench.throughput --model tinyllama --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import requests
import torch

from bench.common import DEFAULT_ROOT, LiveServer, median, percentile, prompt_of, wait_for
from tests.support.tiny_models import save_gpt2_small_shape, save_llama_1b_shape

MODELS = {"gpt2-small": save_gpt2_small_shape, "tinyllama": save_llama_1b_shape}


def ensure_model(name: str):
    """Build the named shape once under bench/models/."""
    path = DEFAULT_ROOT / f"{name}-shape"
    if not (path / "config.json").exists():
        print(f"building {path} ...", flush=True)
        MODELS[name](path)
    return path


def in_process(path, prompt, sizes, new_tokens, device, dtype) -> dict:
    """Aggregate tokens/s of `model.generate` per batch size, and prefill/step times."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    rates = {}
    with torch.inference_mode():
        _generate(model, ids, 4)  # warm-up
        for size in sizes:
            batch = ids.repeat(size, 1)
            seconds = median([_generate(model, batch, new_tokens) for _ in range(2)])
            rates[size] = size * new_tokens / seconds
        prefill = median([_prefill(model, ids) for _ in range(3)])
    step_8 = 8 / rates[8] if 8 in rates else None  # seconds per decoding step at batch 8
    return {"rates": rates, "prefill_s": prefill, "step_8_s": step_8}


def continuous_batching(path, prompt, sizes, new_tokens, device, dtype) -> dict[int, float]:
    """transformers' own continuous batching (`generate_batch`), tokens/s per batch size.

    Each call builds its manager, as `generate_batch` does; that set-up is included.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ids = tokenizer(prompt)["input_ids"]
    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    rates = {}
    for size in sizes:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            out = model.generate_batch(inputs=[ids] * size, generation_config=config)
            times.append(time.perf_counter() - started)
        made = sum(len(o.generated_tokens) for o in out.values())
        rates[size] = made / median(times)
    return rates


def _generate(model, batch, new_tokens) -> float:
    started = time.perf_counter()
    model.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    _sync(batch)
    return time.perf_counter() - started


def _prefill(model, ids) -> float:
    started = time.perf_counter()
    model(ids, logits_to_keep=1)
    _sync(ids)
    return time.perf_counter() - started


def _sync(tensor) -> None:
    if tensor.device.type == "cuda":
        torch.cuda.synchronize()


def stream(live, body, record: dict) -> None:
    """One stream: the arrival time of every event, read with as little client work as can be.

    The client shares the server's two cores, so it only splits chunks on event
    boundaries instead of parsing SSE fully.
    """
    started = time.perf_counter()
    arrivals = []
    with requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=900) as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream refused: {r.status_code} {r.text}")
        for chunk in r.iter_content(chunk_size=None):
            if b"event: error" in chunk:
                raise RuntimeError(f"stream failed: {chunk!r}")
            arrivals += [time.perf_counter()] * chunk.count(b"\n\n")
    record.update(started=started, arrivals=arrivals)


def concurrent(live, body, n, probe: bool = False) -> dict:
    """n streams at once: aggregate rate, first-token times, gaps (and /health latency)."""
    records = [{} for _ in range(n)]
    threads = [threading.Thread(target=stream, args=(live, body, r)) for r in records]
    health, done = [], threading.Event()
    prober = threading.Thread(target=_probe_health, args=(live, health, done))
    started = time.perf_counter()
    if probe:
        prober.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    if probe:
        prober.join()
        return {
            "health_ms_p50": median(health),
            "health_ms_p99": percentile(health, 99),
            "health_ms_max": max(health),
            "health_samples": len(health),
        }
    gaps = [b - a for r in records for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    return {
        "streams": n,
        # ignore_eos: every stream makes exactly max_new_tokens tokens.
        "aggregate_tok_s": n * body["max_new_tokens"] / elapsed,
        "ttft_ms_p50": median([(r["arrivals"][0] - r["started"]) * 1000 for r in records]),
        "gap_ms_p50": median(gaps) * 1000,
        "gap_ms_p99": percentile(gaps, 99) * 1000,
    }


def measure(live, body, n, runs: int) -> dict:
    """Median figures over `runs` clean runs, then one run with /health being probed."""
    clean = [concurrent(live, body, n) for _ in range(runs)]
    figures = {key: median([run[key] for run in clean]) for key in clean[0]}
    return {**figures, **concurrent(live, body, n, probe=True)}


def _probe_health(live, into: list, done: threading.Event) -> None:
    while not done.is_set():
        started = time.perf_counter()
        requests.get(live.url("/health"), timeout=10).raise_for_status()
        into.append((time.perf_counter() - started) * 1000)
        done.wait(0.02)


def joining(live, body, new_tokens) -> float:
    """First-token time (s) of a request that arrives while 7 others are streaming."""
    records = [{} for _ in range(7)]
    long_body = {**body, "max_new_tokens": new_tokens * 4}
    threads = [threading.Thread(target=stream, args=(live, long_body, r)) for r in records]
    for thread in threads:
        thread.start()
    model_id = body["model_id"]
    wait_for(lambda: _stats(live, model_id)["active"] == 7, timeout=300, interval=0.01)
    steps = _stats(live, model_id)["decode_steps"]
    wait_for(lambda: _stats(live, model_id)["decode_steps"] >= steps + 3, 300, interval=0.01)
    record: dict = {}
    stream(live, {**body, "max_new_tokens": 2}, record)
    for thread in threads:
        thread.join()
    return record["arrivals"][0] - record["started"]


def _stats(live, model_id) -> dict:
    loaded = requests.get(live.url("/models"), timeout=10).json()["loaded"]
    return next(m for m in loaded if m["model_id"] == model_id)


def main() -> None:
    """Run the whole comparison and print a table with ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--runs", type=int, default=2, help="clean runs per concurrency")
    parser.add_argument(
        "--with-cb",
        action="store_true",
        help="also measure transformers' continuous batching (generate_batch)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    path = ensure_model(args.model)
    from transformers import AutoTokenizer

    prompt = prompt_of(AutoTokenizer.from_pretrained(path), args.prompt_tokens)
    dtype = getattr(torch, args.dtype)
    baseline = in_process(path, prompt, sizes, args.new_tokens, args.device, dtype)
    if args.with_cb:
        cb_sizes = [n for n in sizes if n in (1, 8)]
        baseline["cb_rates"] = continuous_batching(
            path, prompt, cb_sizes, args.new_tokens, args.device, dtype
        )
    env = {
        "LLMVIZ_MODEL_ROOT": str(path.parent),
        "LLMVIZ_DEVICE": args.device,
        "LLMVIZ_DTYPE": args.dtype,
        "LLMVIZ_MAX_BATCH": str(max(sizes)),
        "LLMVIZ_MAX_QUEUE": str(2 * max(sizes)),  # a burst of N arrives before any is admitted
    }
    body = {
        "model_id": path.name,
        "prompt": prompt,
        "max_new_tokens": args.new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "return_full_text": False,
    }
    with LiveServer(env) as live:
        requests.post(live.url("/generate"), json={**body, "max_new_tokens": 4}, timeout=900)
        server = {n: measure(live, body, n, args.runs) for n in sizes}
        join_s = joining(live, body, args.new_tokens) if 8 in sizes else None

    report = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "in_process": baseline,
        "server": server,
        "join_ttft_s": join_s,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    _print(report, sizes)


def _print(report: dict, sizes: list[int]) -> None:
    base, server = report["in_process"], report["server"]
    print(f"model {report['model']} on {report['device']} ({report['dtype']})")
    print(
        f"{'batch':>5} {'generate':>10} {'server':>10} {'ratio':>6} {'ttft ms':>8} "
        f"{'gap p50':>8} {'gap p99':>8} {'health p50':>10} {'health p99':>10}"
    )
    for n in sizes:
        s = server[n]
        print(
            f"{n:>5} {base['rates'][n]:>10.1f} {s['aggregate_tok_s']:>10.1f} "
            f"{s['aggregate_tok_s'] / base['rates'][n]:>6.2f} {s['ttft_ms_p50']:>8.0f} "
            f"{s['gap_ms_p50']:>8.1f} {s['gap_ms_p99']:>8.1f} {s['health_ms_p50']:>10.1f} "
            f"{s['health_ms_p99']:>10.1f}"
        )
    if 8 in server and 1 in server:
        print(
            f"8 streams / 1 stream (server): "
            f"{server[8]['aggregate_tok_s'] / server[1]['aggregate_tok_s']:.2f}x"
        )
    for n, rate in base.get("cb_rates", {}).items():
        print(f"transformers generate_batch, batch {n}: {rate:.1f} tok/s")
    if report["join_ttft_s"] is not None:
        budget = base["prefill_s"] + 2 * base["step_8_s"]
        print(
            f"joining 7 streams: first token after {report['join_ttft_s'] * 1000:.0f} ms; "
            f"prefill {base['prefill_s'] * 1000:.0f} ms + 2 steps at batch 8 "
            f"{2 * base['step_8_s'] * 1000:.0f} ms = {budget * 1000:.0f} ms "
            f"(ratio {report['join_ttft_s'] / budget:.2f})"
        )


if __name__ == "__main__":
    main()
