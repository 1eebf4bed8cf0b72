"""The app's Prometheus metrics, as Ray metrics: per replica, exported the way Ray exports
its own.

A Ray cluster is scraped at one metrics port per node (`ray start --metrics-export-port`;
Ray lists them in `prom_metrics_service_discovery.json` in its session folder), where each
node's agent exports every Ray metric of that node's processes. `ray.serve.metrics` tags
each with its replica (`application`, `deployment`, `replica`), so one scrape config sees
every replica apart. The app's own GET /metrics still answers, but through Serve's proxy
it is whichever replica the proxy picked.

Each observation the app makes (app/ops/metrics.py) is made again here on a Ray metric of
the same name, help text, labels and buckets; Ray adds its `ray_` prefix when exporting
(`ray_llmviz_requests_total`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from ray.serve import metrics as serve_metrics

from app.ops import metrics


class RayMirror:
    """A `metrics.Mirror` that repeats each observation on a Ray metric, made on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def inc(self, metric: Counter, labels: tuple[str, ...], amount: float) -> None:
        """Add `amount` to the Ray counter of `metric` (Ray refuses 0: nothing to add)."""
        if amount > 0:
            self._counter(metric).inc(amount, tags=_tags(metric, labels))

    def observe(self, metric: Histogram, labels: tuple[str, ...], value: float) -> None:
        """Observe `value` on the Ray histogram of `metric`."""
        self._histogram(metric).observe(value, tags=_tags(metric, labels))

    def set(self, metric: Gauge, value: float) -> None:
        """Set the Ray gauge of `metric`."""
        self._gauge(metric).set(value)

    def _counter(self, metric: Counter) -> serve_metrics.Counter:
        name, help_text, labels = metrics.describe(metric)
        # Ray's exporter adds `_total` to a counter's name itself.
        name = name.removesuffix("_total")
        if name not in self._made:
            self._made[name] = serve_metrics.Counter(name, help_text, tag_keys=_keys(labels))
        return self._made[name]

    def _histogram(self, metric: Histogram) -> serve_metrics.Histogram:
        name, help_text, labels = metrics.describe(metric)
        if name not in self._made:
            bounds = list(metrics.buckets(metric))
            self._made[name] = serve_metrics.Histogram(
                name, help_text, bounds, tag_keys=_keys(labels)
            )
        return self._made[name]

    def _gauge(self, metric: Gauge) -> serve_metrics.Gauge:
        name, help_text, _ = metrics.describe(metric)
        if name not in self._made:
            self._made[name] = serve_metrics.Gauge(name, help_text)
        return self._made[name]


def _keys(labels: tuple[str, ...]) -> Any:
    """Label names as Ray's tag keys (annotated `tuple[str]`, one string; any tuple works)."""
    return labels


def _tags(metric: Any, labels: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(metrics.describe(metric)[2], labels, strict=True))
