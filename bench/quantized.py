"""LLMVIZ_QUANTIZE: how much faster int8 and float16 linear weights decode, and how far the
numbers a user sees move.

Speed, in process, one model at a time: the engine's own decoding step (`DecodeBatch`)
on the model as the server loads it (float32 with packed weights, or quantized), after a
16-token prefill, at 1 and 8 rows; tok/s medians and the ratio to float32.

Drift, through the app itself (Flask's test client, the real request path): for each kind
against float32, on one text,
- `/inspect` next-token candidates: how often the top token is the same, and the largest
  change of that token's probability;
- the logit lens (every layer, every position): the same two figures;
- attention (dense, every layer and head): the largest and the mean change of a weight;
- `/generate`, greedy, 48 tokens from three prompts: tokens until the first that differs,
  and the largest change of a chosen token's log-probability before it.

Run from the repository root:
  .venv/bin/python -m bench.quantized [--models shakespeare gpt2-small] [--llama-1b]
`--llama-1b` adds TinyLlama-1.1B's shape with random weights (4.4 GB in float32,
built once under bench/models; speed only, its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import DEFAULT_ROOT, REPO, ensure_gpt2_small

KINDS = ("none", "int8", "float16")
TEXT = (
    "ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet "
    "is the sun. Arise, fair sun, and kill the envious moon, who is already sick and pale."
)
PROMPTS = ("ROMEO:", "JULIET: O Romeo,", "First Citizen:\nBefore we proceed")


def model_paths(names: list[str], llama_1b: bool) -> dict[str, Path]:
    """The models to measure, built where needed."""
    paths = {}
    if "shakespeare" in names:
        paths["llmviz/shakespeare"] = REPO / "demo_models" / "shakespeare"
    if "gpt2-small" in names:
        paths["gpt2-small shape"] = ensure_gpt2_small()
    if llama_1b:
        paths["tinyllama-1.1b shape"] = _ensure_llama_1b(DEFAULT_ROOT / "llama-1b-shape")
    return paths


def _ensure_llama_1b(path: Path) -> Path:
    if not (path / "config.json").exists():
        from tests.support.tiny_models import save_llama_1b_shape

        print(f"building {path} (random weights) ...", flush=True)
        save_llama_1b_shape(path)
    return path


def load(path: Path, kind: str):
    """The model as the server loads it on a CPU: float32, quantized or packed."""
    from transformers import AutoModelForCausalLM

    from app.models.packing import pack_linear_layers
    from app.models.quantizing import quantize_linear_layers

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if kind == "none":
        pack_linear_layers(model)
    else:
        quantize_linear_layers(model, kind)
    return model


def decode_speed(model, rows: int, steps: int) -> float:
    """Median tok/s of the engine's decoding step at `rows` rows."""
    from app.engine.batch import DecodeBatch

    batch = DecodeBatch(model)
    batch.prefill([list(range(1, 17))] * rows, [None] * rows)
    for _ in range(3):
        batch.step([5] * rows)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        batch.step([5] * rows)
        times.append(time.perf_counter() - started)
    return rows / statistics.median(times)


def speed_table(paths: dict[str, Path], steps: int) -> None:
    """Print tok/s per kind and rows, with ratios to float32."""
    print(f"\nDecoding speed (in process, {steps} steps, medians), tok/s and x float32:")
    for name, path in paths.items():
        base: dict[int, float] = {}
        for kind in KINDS:
            model = load(path, kind)
            cells = []
            for rows in (1, 8):
                speed = decode_speed(model, rows, steps)
                base.setdefault(rows, speed)
                cells.append(f"{rows} rows {speed:8.1f} ({speed / base[rows]:.2f}x)")
            print(f"  {name:20s} {kind:8s} " + "   ".join(cells), flush=True)
            del model


def _inspect(client, model_id: str) -> dict:
    from app.engine import tensors

    body = {
        "model_id": model_id,
        "prompt": TEXT,
        "include": ["next_token", "logit_lens", "attention"],
        "attention": {"format": "dense"},
        "top_k": 20,
    }
    answer = client.post("/inspect", json=body).get_json()
    out = {}
    for part in ("next_token", "logit_lens"):
        out[part] = (tensors.decode(answer[part]["ids"]), tensors.decode(answer[part]["probs"]))
    out["attention"] = tensors.decode(answer["attention"]["weights"]).astype(np.float32)
    return out


def _top_drift(exact: tuple, other: tuple) -> tuple[float, float]:
    """Share of positions with the same top token; the largest change of the exact top
    token's probability (0 where the other run does not list it in its top k)."""
    ids, probs = exact[0].reshape(-1, exact[0].shape[-1]), exact[1].reshape(-1, exact[1].shape[-1])
    ids2, probs2 = other[0].reshape(ids.shape), other[1].reshape(ids.shape)
    same = float((ids[:, 0] == ids2[:, 0]).mean())
    change = 0.0
    for row in range(ids.shape[0]):
        where = np.nonzero(ids2[row] == ids[row, 0])[0]
        theirs = float(probs2[row, where[0]]) if len(where) else 0.0
        change = max(change, abs(float(probs[row, 0]) - theirs))
    return same, change


def _generate(client, model_id: str, prompt: str) -> list[tuple[int, float]]:
    body = {"model_id": model_id, "prompt": prompt, "max_new_tokens": 48, "temperature": 0}
    answer = client.post("/generate", json={**body, "details": True}).get_json()
    return [(t["id"], t["logprob"]) for t in answer["details"]["tokens"]]


def drift_table(paths: dict[str, Path]) -> None:
    """Print how far each kind moves the numbers /inspect and /generate give."""
    from app import create_app, models

    print("\nDrift against float32 (through the app):")
    for name, path in paths.items():
        runs = {}
        for kind in KINDS:
            client = create_app({"model_root": path.parent, "quantize": kind}).test_client()
            model_id = path.name
            generated = [_generate(client, model_id, prompt) for prompt in PROMPTS]
            runs[kind] = (_inspect(client, model_id), generated)
            models.cache.clear()
        exact, exact_tokens = runs["none"]
        for kind in KINDS[1:]:
            other, other_tokens = runs[kind]
            nt_same, nt_change = _top_drift(exact["next_token"], other["next_token"])
            ll_same, ll_change = _top_drift(exact["logit_lens"], other["logit_lens"])
            delta = np.abs(exact["attention"] - other["attention"])
            agree, lp_change = _generation_drift(exact_tokens, other_tokens)
            print(
                f"  {name:20s} {kind:8s} next token: top-1 same {nt_same:.1%}, "
                f"max |dp| {nt_change:.4f} | logit lens: top-1 same {ll_same:.1%}, "
                f"max |dp| {ll_change:.4f} | attention: max |dw| {delta.max():.4f}, "
                f"mean {delta.mean():.2e} | generate: same tokens {agree} of 48, "
                f"max |dlogprob| {lp_change:.4f}",
                flush=True,
            )


def _generation_drift(exact: list, other: list) -> tuple[list[int], float]:
    """Per prompt, the tokens before the first that differs; the largest change of a chosen
    token's log-probability among those."""
    agree, change = [], 0.0
    for mine, theirs in zip(exact, other, strict=True):
        pairs = list(zip(mine, theirs, strict=False))
        same = next((i for i, (a, b) in enumerate(pairs) if a[0] != b[0]), len(pairs))
        agree.append(same)
        change = max([change, *(abs(a[1] - b[1]) for a, b in pairs[:same])])
    return agree, change


def main() -> None:
    """Measure speed, then drift, for the chosen models."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shakespeare", "gpt2-small"])
    parser.add_argument("--llama-1b", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip-drift", action="store_true")
    args = parser.parse_args()
    paths = model_paths(args.models, args.llama_1b)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {torch.get_num_threads()} threads", flush=True)
    speed_table(paths, args.steps)
    if not args.skip_drift:
        drift_table({k: v for k, v in paths.items() if not k.startswith("tinyllama")})


if __name__ == "__main__":
    main()
