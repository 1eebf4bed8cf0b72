"""Prometheus metrics added up across two gunicorn workers."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import wait_for


def _metrics(live):
    text = requests.get(live.url("/metrics"), timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            values[key] = sample.value
    return values


def _value(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_right_across_two_workers(start_server):
    live = start_server(WEB_CONCURRENCY="2")
    body = {"model_id": "tiny-gpt2", "prompt": "Count me", "max_new_tokens": 5, "ignore_eos": True}
    prompt_tokens = requests.post(live.url("/tokenize"), json=body, timeout=60).json()["count"]
    before = _metrics(live)
    for _ in range(6):
        assert requests.post(live.url("/generate"), json=body, timeout=60).status_code == 200
    requests.post(live.url("/generate/stream"), json=body, timeout=60).close()
    wait_for(
        lambda: (
            _value(_metrics(live), "llmviz_generated_tokens_total", model="tiny-gpt2")
            - _value(before, "llmviz_generated_tokens_total", model="tiny-gpt2")
            == 35
        ),
        timeout=10,
        message="7 generations x 5 tokens",
    )
    after = _metrics(live)
    ok = {"endpoint": "/generate", "method": "POST", "status": "200"}
    assert (
        _value(after, "llmviz_requests_total", **ok) - _value(before, "llmviz_requests_total", **ok)
        == 6
    )
    assert (
        _value(after, "llmviz_prompt_tokens_total", model="tiny-gpt2")
        - _value(before, "llmviz_prompt_tokens_total", model="tiny-gpt2")
        == 7 * prompt_tokens
    )
    assert (
        _value(after, "llmviz_time_to_first_token_seconds_count", model="tiny-gpt2")
        - _value(before, "llmviz_time_to_first_token_seconds_count", model="tiny-gpt2")
        == 7
    )
    assert _value(after, "llmviz_request_duration_seconds_count", endpoint="/generate") >= 6
    assert _value(after, "llmviz_model_load_seconds_count", model="tiny-gpt2") >= 1
    assert ("llmviz_active_generations", ()) in after
    assert ("llmviz_loaded_models", ()) in after
    bad = {"endpoint": "/generate", "method": "POST", "status": "400"}
    requests.post(live.url("/generate"), data="{", timeout=10)
    assert (
        _value(_metrics(live), "llmviz_requests_total", **bad)
        - _value(after, "llmviz_requests_total", **bad)
        == 1
    )
