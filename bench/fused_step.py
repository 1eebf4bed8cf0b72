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

The floor: the time to read the very weights a step reads (every linear weight once, the
LM head included) with nothing else to do: a plain C loop over every thread summing each
tensor in turn (bench/read_rate.c, built as the fused step is), the best of 5, measured
right after the model's runs. (`torch.sum` over a fresh 512 MB reads less than the fused
step does here: not a floor.)
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

from bench.common import REPO
from bench.quantized import model_paths

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


def read_seconds(tensors: list[torch.Tensor]) -> float:
    """Seconds to read `tensors` once, one after another, on every thread (best of 5)."""
    import ctypes

    from app.engine.kernels.build import library

    read_all = library(REPO / "bench" / "read_rate.c").read_all
    read_all.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    read_all.restype = ctypes.c_float
    threads = torch.get_num_threads()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for tensor in tensors:
            read_all(tensor.data_ptr(), tensor.numel(), threads)
        best = min(best, time.perf_counter() - started)
    return best


def step_weights(model) -> list[torch.Tensor]:
    """The linear weights one step reads, in order: the blocks' layers, then the LM head
    (the tied embedding's matrix, or the head's own)."""
    body, weights = model.transformer, []
    for block in body.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            weights.append(layer.plain)
    head = model.lm_head
    weights.append(head.plain if getattr(head, "plain", None) is not None else body.wte.weight)
    return weights


def measure(name: str, path: Path, steps: int, runs: int) -> None:
    model, lean = load(path)
    medians: dict[str, list[float]] = {p: [] for p in PATHS}
    logits: dict[str, list[torch.Tensor]] = {}
    for _ in range(runs):
        for kind in PATHS:
            times, out = step_times(model, lean, kind, steps)
            medians[kind].append(statistics.median(times))
            logits[kind] = out
    ms = {kind: statistics.median(values) * 1e3 for kind, values in medians.items()}
    weights = step_weights(model)
    megabytes = sum(w.numel() for w in weights) * 4 / 1e6
    floor_ms = read_seconds(weights) * 1e3
    print(
        f"\n{name}: one row, {steps} steps x {runs} runs, median step (ms), tok/s, x transformers"
    )
    for kind in PATHS:
        print(
            f"  {kind:12s} {ms[kind]:7.2f} ms {1e3 / ms[kind]:8.1f} tok/s"
            f"  {ms['transformers'] / ms[kind]:5.2f}x   {floor_ms / ms[kind]:4.0%} of the floor"
        )
    rate = megabytes / floor_ms  # MB/ms = GB/s
    print(f"  floor: reading those {megabytes:.0f} MB took {floor_ms:.2f} ms ({rate:.1f} GB/s)")
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
    for name, path in model_paths(args.models, llama_1b=False).items():
        measure(name, path, args.steps, args.runs)


if __name__ == "__main__":
    main()
