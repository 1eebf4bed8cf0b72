"""The worker's shutdown: refusals begin at the first SIGTERM, and one drain is scheduled."""

from __future__ import annotations

from app.ops import lifecycle


def test_a_second_sigterm_schedules_no_second_drain(monkeypatch):
    spawned = []
    monkeypatch.setattr(lifecycle, "spawn", lambda fn, *args: spawned.append((fn, args)))
    monkeypatch.setattr(lifecycle, "_stopping", False)
    monkeypatch.setattr(lifecycle, "_background", [])
    lifecycle.begin_shutdown(30.0)
    assert lifecycle.stopping()
    lifecycle.begin_shutdown(30.0)  # gunicorn's arbiter and a `pkill` both send one
    assert spawned == [(lifecycle._drain_later, (28.0,))]
