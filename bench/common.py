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

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import requests  # noqa: E402

from tests.support.server import LiveServer, wait_for  # noqa: E402
from tests.support.sse_client import SSEEvent, stream_events  # noqa: E402
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
    "stream_timing",
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


def stream_timing(
    url: str, body: dict, counted: Callable[[SSEEvent], bool]
) -> tuple[float, float, int]:
    """A streamed POST of `body` to `url`: (ms to the first event `counted` takes, ms per
    such event after it, how many there were)."""
    started, first, count = time.perf_counter(), None, 0
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for event in stream_events(response):
            if isinstance(event, SSEEvent) and counted(event):
                count += 1
                first = first or time.perf_counter()
    if first is None:
        raise RuntimeError(f"{url} streamed no event to count")
    per = (time.perf_counter() - first) * 1000 / max(1, count - 1)
    return (first - started) * 1000, per, count
