"""Retry-After for a full queue: the queued work over the worker's measured pace."""

from __future__ import annotations

from app.engine.backlog import QueuePace
from app.engine.worker import QueueFull
from app.errors import Overloaded, translate


def paced(ends: list[float]) -> QueuePace:
    pace = QueuePace()
    for t in ends:
        pace.finished(t)
    return pace


def test_queue_over_pace():
    pace = paced([100.0 + 0.5 * i for i in range(11)])  # one job ends every 0.5 s
    assert pace.rate(105.0) == 2.0
    assert pace.retry_after(waiting=8, now=105.0) == 4  # 8 jobs / 2 a second
    assert pace.retry_after(waiting=9, now=105.0) == 5  # 4.5 s: rounded up, never early


def test_bounds():
    fast = paced([100.0 + 0.01 * i for i in range(11)])  # 100 jobs a second
    assert fast.retry_after(waiting=3, now=100.1) == QueuePace.MIN_S == 1
    slow = paced([100.0, 110.0])  # one every 10 s
    assert slow.retry_after(waiting=32, now=110.0) == QueuePace.MAX_S == 30


def test_no_pace_yet_and_a_stalled_worker():
    assert QueuePace().retry_after(waiting=32, now=0.0) == QueuePace.UNKNOWN_S
    assert paced([100.0]).retry_after(waiting=32, now=100.0) == QueuePace.UNKNOWN_S
    # Completions older than the horizon say nothing about now.
    assert paced([100.0, 101.0]).retry_after(waiting=4, now=100.0 + 61) == QueuePace.UNKNOWN_S
    # A worker that has stopped finishing work: the rate falls with the time since.
    burst = paced([100.0 + 0.1 * i for i in range(11)])  # 10 a second, then nothing
    assert burst.retry_after(waiting=10, now=101.0) == 1
    assert burst.retry_after(waiting=10, now=120.0) == 20  # 10 in 20 s: 0.5 a second


def test_the_estimate_reaches_the_answer():
    error = translate(QueueFull(32, retry_after=12))
    assert isinstance(error, Overloaded) and error.status == 503
    assert error.headers == {"Retry-After": "12"}
