"""Background duties of a worker process: idle-model unloading, gauges, clean shutdown."""

from __future__ import annotations

import logging
import time

from app import models
from app.engine.threads import spawn, stop
from app.ops import metrics

log = logging.getLogger(__name__)
_INTERVAL = 1.0  # seconds between housekeeping rounds
_started = False
_background: list = []  # greenlets to kill when the worker exits
_stopping = False  # set on SIGTERM: new requests are refused from then on


def start_housekeeping() -> None:
    """Start this process's housekeeping loop (once; a greenlet under gevent)."""
    global _started
    if _started:
        return
    _started = True
    _background.append(spawn(_housekeep))


def refresh_gauges() -> None:
    """Set this process's active/queued/loaded gauges from the engine."""
    metrics.set_engine_gauges([lm.stats() for lm in models.cache.loaded()])


def begin_shutdown(grace_seconds: float) -> None:
    """The worker was told to stop: end generations that would outlive `grace_seconds`.

    Requests that finish in time finish normally; the rest are ended a little
    before the deadline, so their streams close with an `error` event
    (`shutting_down`) instead of being cut off. From now on `stopping()` is true:
    requests that still reach this worker are refused before any work starts.
    """
    global _stopping
    if _stopping:  # a second SIGTERM (from the arbiter and from `pkill`, say): one drain
        return
    _stopping = True
    margin = min(2.0, grace_seconds / 2)
    _background.append(spawn(_drain_later, grace_seconds - margin))


def stopping() -> bool:
    """Whether this worker has been told to stop (SIGTERM)."""
    return _stopping


def stop_background() -> None:
    """Stop housekeeping and any pending shutdown timer (the worker is exiting)."""
    stop(_background)
    _background.clear()


# Logged once stopping() is true: operators see when refusals begin, tests wait for it.
REFUSING = "shutting down: new requests are refused"


def _drain_later(delay: float) -> None:
    # Here, not in the signal handler that spawned this: logging takes locks.
    log.info("%s; generations still running end in %.1f s", REFUSING, max(delay, 0.0))
    time.sleep(max(delay, 0.0))
    log.info("shutting down: ending the generations still running")
    models.cache.drain("shutdown")


def _housekeep() -> None:
    while True:
        time.sleep(_INTERVAL)
        try:
            ttl = models.cache.settings.model_ttl
            if ttl > 0:
                models.cache.unload_idle(ttl)
            refresh_gauges()
        except Exception:  # never let housekeeping die
            log.exception("housekeeping failed")
