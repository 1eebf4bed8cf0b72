"""app/ops/metrics.py's mirrors, and deploy/ray/metrics.py's, which repeats every observation
on a Ray metric of the same name, labels and buckets (the live Ray test scrapes them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.ops import metrics


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def inc(self, metric, labels, amount):
        self.seen.append(("inc", metrics.describe(metric)[0], labels, amount))

    def observe(self, metric, labels, value):
        self.seen.append(("observe", metrics.describe(metric)[0], labels, value))

    def set(self, metric, value):
        self.seen.append(("set", metrics.describe(metric)[0], value))


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setattr(metrics, "_mirrors", [])
    mirror = _Recorder()
    metrics.add_mirror(mirror)
    return mirror


def test_every_observation_reaches_the_mirrors(recorder):
    metrics.observe_request("/generate", "POST", "200", 0.25)
    metrics.observe_generation("m", {"ttft_ms": 100.0, "total_ms": 300.0}, 3, 5)
    metrics.set_engine_gauges([{"active": 2, "queued": 1}])
    assert recorder.seen == [
        ("inc", "llmviz_requests_total", ("/generate", "POST", "200"), 1),
        ("observe", "llmviz_request_duration_seconds", ("/generate",), 0.25),
        ("inc", "llmviz_prompt_tokens_total", ("m",), 3),
        ("inc", "llmviz_generated_tokens_total", ("m",), 5),
        ("observe", "llmviz_time_to_first_token_seconds", ("m",), 0.1),
        ("observe", "llmviz_time_per_output_token_seconds", ("m",), 0.05),
        ("set", "llmviz_active_generations", 2),
        ("set", "llmviz_queued_generations", 1),
        ("set", "llmviz_loaded_models", 1),
    ]


def test_a_failing_mirror_fails_no_request(monkeypatch, caplog):
    class Broken:
        def inc(self, metric, labels, amount):
            raise RuntimeError("the metrics agent is away")

    monkeypatch.setattr(metrics, "_mirrors", [Broken()])
    metrics.observe_generation("m", {}, 3, 5)  # raises nothing
    assert "a metrics mirror failed" in caplog.text


def test_the_prometheus_metrics_still_count(recorder):
    before = metrics.REQUESTS.labels("/x", "GET", "200")._value.get()
    metrics.observe_request("/x", "GET", "200", 0.01)
    assert metrics.REQUESTS.labels("/x", "GET", "200")._value.get() == before + 1


class _FakeRayMetric:
    """Stands for ray.serve.metrics' Counter, Gauge and Histogram: records what it is told."""

    made: list[_FakeRayMetric] = []

    def __init__(self, name, description="", *rest, tag_keys=None):
        self.name, self.description, self.rest, self.tag_keys = name, description, rest, tag_keys
        self.calls: list[tuple] = []
        _FakeRayMetric.made.append(self)

    def inc(self, value, tags=None):
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags=None):
        self.calls.append(("observe", value, tags))

    def set(self, value, tags=None):
        self.calls.append(("set", value, tags))


def test_the_ray_mirror_makes_the_same_metrics(monkeypatch):
    pytest.importorskip("ray.serve", reason="deploy/ray/requirements.txt is not installed")
    from deploy.ray import metrics as ray_metrics

    fake = SimpleNamespace(Counter=_FakeRayMetric, Histogram=_FakeRayMetric, Gauge=_FakeRayMetric)
    monkeypatch.setattr(ray_metrics, "serve_metrics", fake)
    monkeypatch.setattr(_FakeRayMetric, "made", [])
    mirror = ray_metrics.RayMirror()
    mirror.inc(metrics.REQUESTS, ("/generate", "POST", "200"), 1)
    mirror.inc(metrics.REQUESTS, ("/health", "GET", "200"), 1)
    mirror.inc(metrics.PROMPT_TOKENS, ("m",), 0)  # Ray refuses 0; nothing to count anyway
    mirror.observe(metrics.TOKEN_SECONDS, ("m",), 0.02)
    mirror.set(metrics.ACTIVE, 3)
    requests, per_token, active = _FakeRayMetric.made  # none for the prompt tokens' 0
    # Ray exports a counter as <name>_total, with its `ray_` prefix: ray_llmviz_requests_total.
    assert (requests.name, requests.tag_keys) == (
        "llmviz_requests",
        ("endpoint", "method", "status"),
    )
    assert requests.calls == [
        ("inc", 1, {"endpoint": "/generate", "method": "POST", "status": "200"}),
        ("inc", 1, {"endpoint": "/health", "method": "GET", "status": "200"}),
    ]
    assert per_token.name == "llmviz_time_per_output_token_seconds"
    assert per_token.rest == (list(metrics.buckets(metrics.TOKEN_SECONDS)),)
    assert per_token.rest[0][0] == 0.001 and per_token.calls == [("observe", 0.02, {"model": "m"})]
    assert (active.name, active.calls) == ("llmviz_active_generations", [("set", 3, None)])
    assert active.description == metrics.ACTIVE._documentation
