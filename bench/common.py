"""Helpers shared by the benchmarks: models, prompts, statistics, a live server."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from tests.support.server import LiveServer, wait_for  # noqa: E402
from tests.support.tiny_models import save_gpt2_small_shape  # noqa: E402

__all__ = [
    "DEFAULT_ROOT",
    "REPO",
    "LiveServer",
    "wait_for",
    "ensure_gpt2_small",
    "prompt_of",
    "median",
    "percentile",
]

DEFAULT_ROOT = REPO / "bench" / "models"


def ensure_gpt2_small(root: Path = DEFAULT_ROOT) -> Path:
    """GPT-2 small's shape with random weights, built once under `root`."""
    path = root / "gpt2-small-shape"
    if not (path / "config.json").exists():
        print(f"building {path} ...", flush=True)
        save_gpt2_small_shape(path)
    return path


def prompt_of(tokenizer, n_tokens: int) -> str:
    """A prompt of exactly `n_tokens` tokens (when the tokenizer round-trips it)."""
    words = " ".join(["the quick brown fox jumps over the lazy dog"] * (n_tokens // 4 + 8))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]
