"""Plain and intervened requests decoding at once: a group of their own for the intervened
rows (the first version of the engine), or one shared pass with the interventions masked to
their rows (the engine now). Which round is faster?

In process, the engine's own decoding step (`DecodeBatch`) on the model as the server loads
it (float32, packed weights), N rows after a 16-token prefill, k of them intervened (a head
ablated and a steering vector added, as bench/interventions.py sends):
- groups: the N - k plain rows take their lean step (app/engine/lean.py), then the k
  intervened rows a step of their own with the hooks on every row (two passes a round);
- masks: all N rows in one pass through transformers' forward (hooks rule out the lean
  step), the hooks changing only the k rows (`interventions.for_rows`);
- all plain: N rows, lean: the round with no interventions at all, for scale.
A round's time is the median over `--steps` rounds.

  .venv/bin/python -m bench.intervention_rows [--models shakespeare gpt2-small] [--rows 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from app.engine.batch import DecodeBatch
from app.engine.interventions import Intervention, InterventionSet, for_rows
from app.engine.lean import LeanStep
from bench.quantized import load, model_paths


def _interventions(model) -> InterventionSet:
    width = model.config.get_text_config().hidden_size
    vector = torch.randn(width, generator=torch.Generator().manual_seed(0)).tolist()
    return InterventionSet(
        [
            Intervention("ablate_head", 1, head=2),
            Intervention("steer", 3, vector=tuple(vector), scale=4.0),
        ]
    )


def _batch(model, rows: int, lean: LeanStep | None) -> DecodeBatch:
    batch = DecodeBatch(model, lean)
    batch.prefill([list(range(1, 17))] * rows, [None] * rows)
    return batch


def _median_round(round_: Callable[[], None], steps: int) -> float:
    for _ in range(3):
        round_()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        round_()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model, rows: int, intervened: int, steps: int) -> dict[str, float]:
    """Median round time (s) of each design, N = `rows`, k = `intervened`."""
    lean = LeanStep.make(model)
    plain = _batch(model, rows - intervened, lean)
    apart = _batch(model, intervened, None)
    shared = _batch(model, rows, None)
    everything = _batch(model, rows, lean)
    changes = _interventions(model)

    def groups() -> None:
        plain.step([5] * (rows - intervened))
        with changes.applied(model, starts=None):
            apart.step([5] * intervened, lean=False)

    def masks() -> None:
        with for_rows(model, [changes] * intervened + [None] * (rows - intervened), None):
            shared.step([5] * rows, lean=False)

    with torch.inference_mode():
        return {
            "groups": _median_round(groups, steps),
            "masks": _median_round(masks, steps),
            "all plain": _median_round(lambda: everything.step([5] * rows), steps),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shakespeare", "gpt2-small"])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--intervened", type=int, nargs="+", default=[1, 4, 7])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    print(f"N = {args.rows} rows, k intervened; round time (ms), medians of {args.steps}")
    print(f"{'model':20s} {'k':>2} {'groups':>8} {'masks':>8} {'plain':>8} {'masks/groups':>13}")
    for name, path in model_paths(args.models, llama_1b=False).items():
        model = load(path, "none")
        for k in args.intervened:
            t = measure(model, args.rows, k, args.steps)
            ratio = t["masks"] / t["groups"]
            print(
                f"{name:20s} {k:2d} {t['groups'] * 1e3:8.2f} {t['masks'] * 1e3:8.2f} "
                f"{t['all plain'] * 1e3:8.2f} {ratio:13.2f}",
                flush=True,
            )
        del model


if __name__ == "__main__":
    main()
