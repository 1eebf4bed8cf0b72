"""Prometheus metrics, correct across gunicorn workers (prometheus_client's multiprocess mode).

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the
workers start; each worker then writes its values there and GET /metrics adds
them up. Without that variable (flask run, tests) one process's registry is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from app.models import LoadedModel

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "llmviz_requests_total",
    "HTTP requests by endpoint, method and status.",
    ["endpoint", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "llmviz_request_duration_seconds",
    "Time from request to the end of the response (streams included).",
    ["endpoint"],
    buckets=_LATENCY,
)
FIRST_TOKEN_SECONDS = Histogram(
    "llmviz_time_to_first_token_seconds",
    "Time from arrival to the first generated token.",
    ["model"],
    buckets=_LATENCY,
)
TOKEN_SECONDS = Histogram(
    "llmviz_time_per_output_token_seconds",
    "Average time per generated token after the first.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PROMPT_TOKENS = Counter("llmviz_prompt_tokens_total", "Prompt tokens processed.", ["model"])
GENERATED_TOKENS = Counter("llmviz_generated_tokens_total", "Tokens generated.", ["model"])
ACTIVE = Gauge(
    "llmviz_active_generations", "Generations being decoded now.", multiprocess_mode="livesum"
)
QUEUED = Gauge(
    "llmviz_queued_generations",
    "Generations waiting for a batch slot.",
    multiprocess_mode="livesum",
)
LOADED_MODELS = Gauge("llmviz_loaded_models", "Models held in memory.", multiprocess_mode="livesum")
LOAD_SECONDS = Histogram(
    "llmviz_model_load_seconds",
    "Time to load a model.",
    ["model"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


def observe_generation(model: str, timing: dict, prompt_tokens: int, generated: int) -> None:
    """Count a finished generation's tokens and record its latencies."""
    PROMPT_TOKENS.labels(model).inc(prompt_tokens)
    GENERATED_TOKENS.labels(model).inc(generated)
    if timing.get("ttft_ms") is not None:
        FIRST_TOKEN_SECONDS.labels(model).observe(timing["ttft_ms"] / 1000)
        if generated > 1:
            after_first = timing["total_ms"] - timing["ttft_ms"]
            TOKEN_SECONDS.labels(model).observe(after_first / 1000 / (generated - 1))


def observe_load(lm: LoadedModel) -> None:
    """Record how long a model took to load."""
    LOAD_SECONDS.labels(lm.model_id).observe(lm.load_seconds)


def set_engine_gauges(stats: list[dict[str, int]]) -> None:
    """This process's share of the active/queued/loaded gauges."""
    ACTIVE.set(sum(s["active"] for s in stats))
    QUEUED.set(sum(s["queued"] for s in stats))
    LOADED_MODELS.set(len(stats))


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every worker's metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
