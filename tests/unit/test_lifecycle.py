"""The worker's shutdown: one drain a SIGTERM, and refusals only once the drain begins."""

from __future__ import annotations

import pytest

from app.ops import lifecycle


@pytest.fixture
def fresh(monkeypatch):
    """A worker that has had no SIGTERM; spawned greenlets are recorded, not run."""
    spawned = []
    monkeypatch.setattr(lifecycle, "spawn", lambda fn, *args: spawned.append((fn, args)))
    monkeypatch.setattr(lifecycle, "_stopping", False)
    monkeypatch.setattr(lifecycle, "_draining", False)
    monkeypatch.setattr(lifecycle, "_background", [])
    return spawned


def test_a_second_sigterm_schedules_no_second_drain(fresh):
    lifecycle.begin_shutdown(30.0)
    assert lifecycle.stopping()
    lifecycle.begin_shutdown(30.0)  # gunicorn's arbiter and a `pkill` both send one
    assert fresh == [(lifecycle._drain_later, (28.0,))]


def test_a_stopping_worker_serves_until_the_drain(fresh, client, monkeypatch):
    lifecycle.begin_shutdown(30.0)
    assert lifecycle.stopping() and not lifecycle.draining()
    # On a reload no other worker could have had this request: it is served.
    assert client.get("/health").status_code == 200
    assert client.post("/tokenize", json={"prompt": "Hi"}).status_code == 200
    drained = []
    monkeypatch.setattr(lifecycle.models.cache, "drain", drained.append)
    lifecycle._drain_later(0.0)  # the grace is nearly spent: generations are being ended
    assert drained == ["shutdown"] and lifecycle.draining()
    refused = client.post("/tokenize", json={"prompt": "Hi"})
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "shutting_down"
    assert refused.headers["Retry-After"] == "5"
