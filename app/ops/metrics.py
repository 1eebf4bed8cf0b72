"""Prometheus metrics, correct across gunicorn workers (prometheus_client's multiprocess mode).

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the
workers start; each worker then writes its values there and GET /metrics adds
them up. Without that variable (flask run, tests) one process's registry is used.

Every observation is also handed to the `Mirror`s added with `add_mirror`: under Ray
Serve, deploy/ray/metrics.py sends them on as Ray metrics, which each node exports for
Prometheus with the replica's tags, as Ray exports its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

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
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from app.models import LoadedModel

log = logging.getLogger(__name__)

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


class Mirror(Protocol):
    """Somewhere else each observation goes: the metric it was made on (one of the above),
    its label values in the metric's order, and the amount."""

    def inc(self, metric: Counter, labels: tuple[str, ...], amount: float) -> None:
        """A counter went up by `amount`."""
        ...

    def observe(self, metric: Histogram, labels: tuple[str, ...], value: float) -> None:
        """A histogram observed `value`."""
        ...

    def set(self, metric: Gauge, value: float) -> None:
        """A gauge (unlabelled) was set to `value`."""
        ...


_mirrors: list[Mirror] = []


def add_mirror(mirror: Mirror) -> None:
    """Hand every observation from now on to `mirror` as well."""
    _mirrors.append(mirror)


def describe(metric: MetricWrapperBase) -> tuple[str, str, tuple[str, ...]]:
    """A metric's name as exposed (a counter's with `_total`), help text and label names."""
    name = metric._name + ("_total" if isinstance(metric, Counter) else "")
    return name, metric._documentation, tuple(metric._labelnames)


def buckets(metric: Histogram) -> tuple[float, ...]:
    """A histogram's bucket bounds, without the last (+Inf)."""
    return tuple(metric._upper_bounds[:-1])


def observe_request(endpoint: str, method: str, status: str, seconds: float) -> None:
    """Count an answered request and record how long it took (a stream: to its last byte)."""
    _inc(REQUESTS, (endpoint, method, status), 1)
    _observe(REQUEST_SECONDS, (endpoint,), seconds)


def observe_generation(model: str, timing: dict, prompt_tokens: int, generated: int) -> None:
    """Count a finished generation's tokens and record its latencies."""
    _inc(PROMPT_TOKENS, (model,), prompt_tokens)
    _inc(GENERATED_TOKENS, (model,), generated)
    if timing.get("ttft_ms") is not None:
        _observe(FIRST_TOKEN_SECONDS, (model,), timing["ttft_ms"] / 1000)
        if generated > 1:
            after_first = timing["total_ms"] - timing["ttft_ms"]
            _observe(TOKEN_SECONDS, (model,), after_first / 1000 / (generated - 1))


def observe_load(lm: LoadedModel) -> None:
    """Record how long a model took to load."""
    _observe(LOAD_SECONDS, (lm.model_id,), lm.load_seconds)


def set_engine_gauges(stats: list[dict[str, int]]) -> None:
    """This process's share of the active/queued/loaded gauges."""
    _set(ACTIVE, sum(s["active"] for s in stats))
    _set(QUEUED, sum(s["queued"] for s in stats))
    _set(LOADED_MODELS, len(stats))


def _inc(metric: Counter, labels: tuple[str, ...], amount: float) -> None:
    metric.labels(*labels).inc(amount)
    _tell_mirrors(lambda mirror: mirror.inc(metric, labels, amount))


def _observe(metric: Histogram, labels: tuple[str, ...], value: float) -> None:
    metric.labels(*labels).observe(value)
    _tell_mirrors(lambda mirror: mirror.observe(metric, labels, value))


def _set(metric: Gauge, value: float) -> None:
    metric.set(value)
    _tell_mirrors(lambda mirror: mirror.set(metric, value))


def _tell_mirrors(tell: Callable[[Mirror], None]) -> None:
    for mirror in _mirrors:
        try:
            tell(mirror)
        except Exception:  # metrics elsewhere must never fail the request that made them
            log.exception("a metrics mirror failed")


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every worker's metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
