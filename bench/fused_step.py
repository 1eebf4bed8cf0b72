"""The fused decoding step (app/engine/kernels): one row's step time against the lean step
and transformers' forward, the share of the memory-bandwidth floor it reaches, and how far
its logits move.

In process, one model at a time, loaded as the server loads it on a CPU (float32, packed
weights with plain copies kept). For each path, the engine's own `DecodeBatch.step` at one
row after a 16-token prefill, `--steps` steps; the paths take turns, `--runs` times, and
each figure is the median over runs of a run's median step.

- `transformers`: `DecodeBatch` without a lean step (transformers' forward, oneDNN products);
- `lean`: the lean step's PyTorch path (app/engine/lean.py);
- `fused`: the C step.

The floor: the bytes a step must read (every linear weight once, the LM head included)
at the rate this machine reads memory: the best of 5 reads of 512 MB by `torch.sum` and
by a plain C loop over every thread (bench/read_rate.c, built as the fused step is);
`torch.sum` alone reads less than the fused step does.
Drift: the fused step's logits against transformers' over the same teacher-forced steps,
the largest change of a logit and of a log-probability.

Run from the repository root:
  .venv/bin/python -m bench.fused_step [--models shakespeare gpt2-small] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.common import REPO, ensure_gpt2_small

PATHS = ("transformers", "lean", "fused")


def load(path: Path):
    """The model and its lean step, as the server makes them (fused step included)."""
    from transformers import AutoModelForCausalLM

    from app.engine.lean import LeanStep
    from app.models.packing import pack_linear_layers

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    pack_linear_layers(model, keep_plain=True)
    lean = LeanStep.make(model)
    if lean is None or lean.fused is None:
        raise SystemExit(f"{path}: no fused step here (see the log)")
    return model, lean


def step_times(model, lean, path: str, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    """Seconds per step and the logits, greedy from a 16-token prompt, for one path."""
    from app.engine.batch import DecodeBatch

    fused = lean.fused
    if path == "lean":
        lean.fused = None
    batch = DecodeBatch(model, None if path == "transformers" else lean)
    try:
        token = int(batch.prefill([list(range(1, 17))], [None]).logits.argmax())
        times, logits = [], []
        for _ in range(steps):
            started = time.perf_counter()
            out = batch.step([token]).logits
            times.append(time.perf_counter() - started)
            logits.append(out)
            token = int(out.argmax())
    finally:
        lean.fused = fused
    return times, logits


def read_rate() -> float:
    """Bytes a second this machine reads: the best of `torch.sum` and a C loop over 512 MB,
    5 times each."""
    import ctypes

    from app.engine.kernels.build import library

    read_all = library(REPO / "bench" / "read_rate.c").read_all
    read_all.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    read_all.restype = ctypes.c_float
    data = torch.ones(128 * 1024 * 1024)
    reads = [
        lambda: float(data.sum()),
        lambda: read_all(data.data_ptr(), data.numel(), torch.get_num_threads()),
    ]
    best = 0.0
    for read in reads:
        for _ in range(5):
            started = time.perf_counter()
            read()
            best = max(best, data.numel() * 4 / (time.perf_counter() - started))
    return best


def weight_bytes_per_step(model) -> int:
    """Bytes of linear weights one step reads: the blocks' layers and the LM head."""
    body = model.transformer
    total = body.wte.weight.numel() * 4  # the head: the tied embedding, or its own weight
    for block in body.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            total += layer.plain.numel() * 4
    return total


def measure(name: str, path: Path, steps: int, runs: int, rate: float) -> None:
    model, lean = load(path)
    medians: dict[str, list[float]] = {p: [] for p in PATHS}
    logits: dict[str, list[torch.Tensor]] = {}
    for _ in range(runs):
        for kind in PATHS:
            times, out = step_times(model, lean, kind, steps)
            medians[kind].append(statistics.median(times))
            logits[kind] = out
    ms = {kind: statistics.median(values) * 1e3 for kind, values in medians.items()}
    floor_ms = weight_bytes_per_step(model) / rate * 1e3
    print(
        f"\n{name}: one row, {steps} steps x {runs} runs, median step (ms), tok/s, x transformers"
    )
    for kind in PATHS:
        print(
            f"  {kind:12s} {ms[kind]:7.2f} ms {1e3 / ms[kind]:8.1f} tok/s"
            f"  {ms['transformers'] / ms[kind]:5.2f}x   {floor_ms / ms[kind]:4.0%} of the floor"
        )
    megabytes = weight_bytes_per_step(model) / 1e6
    print(f"  floor: {megabytes:.0f} MB at {rate / 1e9:.1f} GB/s = {floor_ms:.2f} ms")
    # Drift: teacher-forced on transformers' tokens would need one more pass; the greedy
    # runs stay on the same tokens while the logits agree, so compare step by step until
    # the first step whose chosen token differs.
    worst_logit = worst_logprob = 0.0
    agreed = 0
    for mine, theirs in zip(logits["fused"], logits["transformers"], strict=True):
        worst_logit = max(worst_logit, float((mine - theirs).abs().max()))
        change = mine.log_softmax(-1) - theirs.log_softmax(-1)
        worst_logprob = max(worst_logprob, float(change.abs().max()))
        if int(mine.argmax()) != int(theirs.argmax()):
            break
        agreed += 1
    print(
        f"  fused vs transformers: same greedy token for {agreed}/{steps} steps;"
        f" largest change of a logit {worst_logit:.1e}, of a log-probability {worst_logprob:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shakespeare", "gpt2-small"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rate = read_rate()
    models = {"llmviz/shakespeare": REPO / "demo_models" / "shakespeare"}
    if "gpt2-small" in args.models:
        models["gpt2-small shape"] = ensure_gpt2_small()
    for name, path in models.items():
        if name == "llmviz/shakespeare" and "shakespeare" not in args.models:
            continue
        measure(name, path, args.steps, args.runs, rate)


if __name__ == "__main__":
    main()
