"""Batching throughput: the real gunicorn server against in-process `model.generate`.

In one run, on the same model and machine, for the seed's default sampling
(temperature 0.7, top-p 0.95) and for greedy decoding:
- in-process `model.generate` at batch 1/4/8/16 with the same parameters
  (`do_sample=True`, fixed length), median of `--runs`, measured just before the
  server's figure for the same size (the server idles meanwhile); on a CPU in
  float32, also `generate` with the linear layers packed for oneDNN as the server
  packs them (app/models/packing.py), the like-for-like baseline;
- the server with 1/4/8/16 concurrent streams: aggregate tokens/s, time to first
  token, p50/p99 gap between tokens (medians of `--runs`), and /health latency
  under that load (one more run);
- joining: 4 streams are running and a 900-token prompt joins. The running
  streams' largest gap between tokens against their median gap, and the joiner's
  first-token time against its solo prefill plus one step (medians of `--runs`):
  the solo prefill both in process (packed where the server packs) and as the same
  server's first token for the prompt with nothing running, measured in each try
  just before the join (a shared machine's speed drifts by a quarter between
  minutes), the step being the running streams' median gap in that try.

Prints a table; writes the figures as JSON too (`--json`).

Run from the repository root:  .venv/bin/python -m bench.throughput
GPU:  .venv/bin/python -m bench.throughput --model tinyllama --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import requests
import torch

from bench.common import DEFAULT_ROOT, REPO, LiveServer, median, percentile, prompt_of, wait_for
from tests.support.tiny_models import save_gpt2_small_shape, save_llama_1b_shape

MODELS = {"gpt2-small": save_gpt2_small_shape, "tinyllama": save_llama_1b_shape}
# The seed's defaults (SamplingParams), and greedy decoding.
MODES = {"sampled": {"temperature": 0.7, "top_p": 0.95}, "greedy": {"temperature": 0}}


def ensure_model(name: str):
    """Build the named shape once under bench/models/."""
    path = DEFAULT_ROOT / f"{name}-shape"
    if not (path / "config.json").exists():
        print(f"building {path} ...", flush=True)
        MODELS[name](path)
    return path


class InProcess:
    """The baseline: `model.generate` on the same model and device, in this process.

    With `packed`, the model's linear layers are first packed for oneDNN as the server
    packs them (app/models/packing.py; float32 on a CPU only): the same kernels as the
    server, so that the ratio measures the serving alone.
    """

    def __init__(self, path, prompts: dict, device, dtype, packed: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.models.packing import pack_linear_layers

        tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.packed = packed and pack_linear_layers(self.model) > 0
        self.model.generation_config.pad_token_id = tokenizer.eos_token_id
        self.ids = tokenizer(prompts["short"], return_tensors="pt")["input_ids"].to(device)
        self.long_ids = tokenizer(prompts["long"], return_tensors="pt")["input_ids"].to(device)
        with torch.inference_mode():
            _generate(self.model, self.ids, 4, MODES["sampled"])  # warm-up

    def rate(self, size: int, new_tokens: int, sampling: dict, runs: int) -> float:
        """Aggregate tokens/s of `generate` at batch `size` (median of `runs`)."""
        batch = self.ids.repeat(size, 1)
        with torch.inference_mode():
            times = [_generate(self.model, batch, new_tokens, sampling) for _ in range(runs)]
        return size * new_tokens / median(times)

    def prefill(self) -> float:
        """Seconds for one forward pass over the long prompt (the last position's logits)."""
        with torch.inference_mode():
            return _prefill(self.model, self.long_ids)


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


def _generate(model, batch, new_tokens, sampling: dict) -> float:
    started = time.perf_counter()
    if sampling["temperature"] == 0:
        options = {"do_sample": False}
    else:  # top_k=0: no top-k, as in the server's requests (transformers would default to 50)
        options = {"do_sample": True, "top_k": 0, **sampling}
    model.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
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
    arrivals = record["arrivals"] = []  # filled as events come: others may watch it grow
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


def joining(live, body, long_prompt, new_tokens, runs, prefill) -> dict:
    """4 streams are running and a long prompt joins (median figures of `runs` tries)."""
    tries = [_join_once(live, body, long_prompt, new_tokens, prefill) for _ in range(runs)]
    return {key: median([t[key] for t in tries]) for key in tries[0]}


def _join_once(live, body, long_prompt, new_tokens, prefill) -> dict:
    """One try: the long prompt's solo prefill, in process and as the server's first token
    with nothing running, then the same prompt joining 4 running streams."""
    # One event per token (`details`): a plain stream sends no event for a token that ends
    # inside a character (random weights make many), and that token's gap would count twice.
    body = {**body, "details": True}
    prefill_s = median([prefill() for _ in range(3)])  # the first pass after a while is slow
    alone: dict = {}
    stream(live, {**body, "prompt": long_prompt, "max_new_tokens": 1}, alone)
    records = [{} for _ in range(4)]
    running = {**body, "max_new_tokens": new_tokens * 4}  # still running well after the join
    threads = [threading.Thread(target=stream, args=(live, running, r)) for r in records]
    for thread in threads:
        thread.start()
    # Every stream is running and has had a few steps. Watched from the streams themselves:
    # polling the server here (as /models every 10 ms once did) slows the very steps that
    # the join is measured against.
    ready = lambda: all(len(r.get("arrivals", ())) >= 6 for r in records)  # noqa: E731
    alive = lambda: all(thread.is_alive() for thread in threads)  # noqa: E731
    wait_for(lambda: ready() or not alive(), 300, interval=0.05)
    if not ready():  # a stream failed (its thread printed why): no join to measure
        raise RuntimeError("a running stream ended before the join")
    joiner: dict = {}
    stream(live, {**body, "prompt": long_prompt, "max_new_tokens": 2}, joiner)
    for thread in threads:
        thread.join()
    gaps = [
        [b - a for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)] for r in records
    ]
    largest = max(max(g) for g in gaps)
    typical = median([gap for g in gaps for gap in g])
    solo_ttft = alone["arrivals"][0] - alone["started"]
    ttft = joiner["arrivals"][0] - joiner["started"]
    return {
        "running_gap_ms_max": largest * 1000,
        "running_gap_ms_p50": typical * 1000,
        "gap_ratio": largest / typical,
        "joiner_ttft_ms": ttft * 1000,
        "prefill_ms": prefill_s * 1000,
        "solo_ttft_ms": solo_ttft * 1000,
        # Against its solo prefill (in process) plus one step of the running streams (their
        # median gap), all in the same try; and against its first token from the same server
        # with nothing running, plus that step.
        "ttft_ratio": ttft / (prefill_s + typical),
        "served_ratio": ttft / (solo_ttft + typical),
    }


def main() -> None:
    """Run the whole comparison, print a table with ratios and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--join-prompt-tokens", type=int, default=900)
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--modes", default="sampled,greedy")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (medians)")
    parser.add_argument(
        "--with-cb",
        action="store_true",
        help="also measure transformers' continuous batching (generate_batch)",
    )
    parser.add_argument(
        "--json",
        default=str(REPO / "bench" / "results" / "throughput.json"),
        help="where to write the figures as JSON ('-': standard output)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")

    path = ensure_model(args.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = {
        "short": prompt_of(tokenizer, args.prompt_tokens),
        "long": prompt_of(tokenizer, args.join_prompt_tokens),
    }
    dtype = getattr(torch, args.dtype)
    generate = InProcess(path, prompts, args.device, dtype)
    # Where the server packs its linear layers (float32 on a CPU), the same kernels in
    # process as well; elsewhere no second copy of the model is loaded.
    like = None
    if args.device == "cpu" and dtype == torch.float32:
        like = InProcess(path, prompts, args.device, dtype, packed=True)
        like = like if like.packed else None
    baseline: dict = {
        "rates": {},
        "packed_rates": {},
        "join_prompt_tokens": generate.long_ids.shape[1],
    }
    if args.with_cb:
        cb_sizes = [n for n in sizes if n in (1, 8)]
        baseline["cb_rates"] = continuous_batching(
            path, prompts["short"], cb_sizes, args.new_tokens, args.device, dtype
        )
    env = {
        "LLMVIZ_MODEL_ROOT": str(path.parent),
        "LLMVIZ_DEVICE": args.device,
        "LLMVIZ_DTYPE": args.dtype,
        # Room for the join scenario's fifth stream, or it would queue until a row ends.
        "LLMVIZ_MAX_BATCH": str(max(*sizes, 5)),
        "LLMVIZ_MAX_QUEUE": str(2 * max(*sizes, 5)),  # a burst arrives before any is admitted
    }
    body = {
        "model_id": path.name,
        "prompt": prompts["short"],
        "max_new_tokens": args.new_tokens,
        "ignore_eos": True,
        "return_full_text": False,
    }
    server: dict[str, dict[int, dict]] = {}
    with LiveServer(env) as live:
        requests.post(live.url("/generate"), json={**body, "max_new_tokens": 4}, timeout=900)
        for mode in modes:
            baseline["rates"][mode], server[mode] = {}, {}
            for n in sizes:
                # The baseline just before the server's figure: a shared machine's speed
                # drifts between minutes, and a ratio should not measure that.
                rate = generate.rate(n, args.new_tokens, MODES[mode], args.runs)
                baseline["rates"][mode][n] = rate
                if like is not None:
                    packed = like.rate(n, args.new_tokens, MODES[mode], args.runs)
                    baseline["packed_rates"].setdefault(mode, {})[n] = packed
                server[mode][n] = measure(live, {**body, **MODES[mode]}, n, args.runs)
        join = joining(
            live,
            {**body, **MODES["sampled"]},
            prompts["long"],
            args.new_tokens,
            args.runs,
            (like or generate).prefill,
        )
    report = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "new_tokens": args.new_tokens,
        "prompt_tokens": args.prompt_tokens,
        "runs": args.runs,
        "in_process": baseline,
        "server": server,
        "join": join,
    }
    _print(report, sizes, modes)
    text = json.dumps(report, indent=2, default=str)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        print(f"JSON: {args.json}")


def _print(report: dict, sizes: list[int], modes: list[str]) -> None:
    base, server, join = report["in_process"], report["server"], report["join"]
    print(
        f"model {report['model']} on {report['device']} ({report['dtype']}), "
        f"{report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, "
        f"medians of {report['runs']}"
    )
    packed = base["packed_rates"]
    if packed:
        print(
            "generate: in-process model.generate as loaded; packed: the same with its linear "
            "layers packed for oneDNN, as the server runs them (ratio: server over each)"
        )
    print(
        f"{'mode':>8} {'batch':>5} {'generate':>9} {'packed':>9} {'server':>9} {'ratio':>6} "
        f"{'packed':>6} {'ttft ms':>8} "
        f"{'gap p50':>8} {'gap p99':>8} {'health p50':>10} {'health p99':>10}"
    )
    for mode in modes:
        for n in sizes:
            s, rate = server[mode][n], base["rates"][mode][n]
            like = packed.get(mode, {}).get(n)
            like_rate, like_ratio = (
                (f"{like:>9.1f}", f"{s['aggregate_tok_s'] / like:>6.2f}") if like else ("-", "-")
            )
            print(
                f"{mode:>8} {n:>5} {rate:>9.1f} {like_rate:>9} {s['aggregate_tok_s']:>9.1f} "
                f"{s['aggregate_tok_s'] / rate:>6.2f} {like_ratio:>6} {s['ttft_ms_p50']:>8.0f} "
                f"{s['gap_ms_p50']:>8.1f} {s['gap_ms_p99']:>8.1f} {s['health_ms_p50']:>10.1f} "
                f"{s['health_ms_p99']:>10.1f}"
            )
    for n, rate in base.get("cb_rates", {}).items():
        print(f"transformers generate_batch, batch {n}: {rate:.1f} tok/s")
    print(
        f"join: 4 streams running, a {base['join_prompt_tokens']}-token prompt joins: "
        f"running streams' largest gap {join['running_gap_ms_max']:.0f} ms, "
        f"median {join['running_gap_ms_p50']:.0f} ms (ratio {join['gap_ratio']:.2f})"
    )
    print(
        f"      joiner's first token after {join['joiner_ttft_ms']:.0f} ms; its solo prefill "
        f"{join['prefill_ms']:.0f} ms + one step {join['running_gap_ms_p50']:.0f} ms "
        f"(ratio {join['ttft_ratio']:.2f}); its first token alone from the server "
        f"{join['solo_ttft_ms']:.0f} ms + that step (ratio {join['served_ratio']:.2f})"
    )


if __name__ == "__main__":
    main()
