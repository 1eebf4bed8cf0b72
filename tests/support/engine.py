"""Helpers for tests that drive the engine's worker directly."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from app.engine import GenerationJob, ModelTask, ModelWorker


def submit_together(worker: ModelWorker, jobs: Sequence[GenerationJob]) -> None:
    """Submit `jobs` while the worker's thread is held by a task, so that they start
    together: one prefill pass, then rows of the same decoding steps."""
    gate = threading.Event()
    blocker = ModelTask(lambda model, tokenizer: gate.wait(10))
    worker.submit(blocker)
    for job in jobs:
        worker.submit(job)
    gate.set()
    assert blocker.result() is True  # the gate opened: the jobs were queued behind it
