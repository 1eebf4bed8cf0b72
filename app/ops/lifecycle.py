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
_stopping = False  # set on SIGTERM: this worker is going away
_draining = False  # set when the drain begins: new requests are refused from then on


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
    (`shutting_down`) instead of being cut off. From now on `stopping()` is true.

    Until that drain, requests that still reach this worker are served like any other:
    gunicorn's gevent worker keeps accepting connections for up to a second after the
    signal (it closes its listener at its next check), and answers each request with
    `Connection: close`. On a reload (HUP), a scale-down (TTOU) or a new master taking
    over (USR2, then TERM to the old one) no other worker could have had those requests:
    refusing them failed them. On a full stop each of a proxy's kept-alive connections brings
    at most one more request, served before the deadline like those already running.
    Only from the drain on, when work here can no longer finish, is `draining()` true
    and every new request refused (`503 shutting_down`, before any work starts).
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


def draining() -> bool:
    """Whether this worker is ending its last generations: new work here cannot finish."""
    return _draining


def stop_background() -> None:
    """Stop housekeeping and any pending shutdown timer (the worker is exiting)."""
    stop(_background)
    _background.clear()


# Logged once stopping() is true, and once draining() is: operators see when each
# begins, tests wait for them.
STOPPING = "shutting down: serving what arrives"
REFUSING = "shutting down: new requests are refused"


def _drain_later(delay: float) -> None:
    global _draining
    # Here, not in the signal handler that spawned this: logging takes locks.
    log.info("%s; generations still running end in %.1f s", STOPPING, max(delay, 0.0))
    time.sleep(max(delay, 0.0))
    _draining = True
    log.info("%s; ending the generations still running", REFUSING)
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
