"""Operating a worker process: Prometheus metrics, idle-model unloading, clean shutdown."""

from __future__ import annotations

from typing import Any

from app import models
from app.engine.threads import native_logging_locks
from app.ops import lifecycle, metrics


def init_app(app: Any) -> None:
    """Record model loads in the metrics and start this process's housekeeping."""
    native_logging_locks()  # before any model thread logs
    models.cache.on_load = metrics.observe_load
    lifecycle.start_housekeeping()
