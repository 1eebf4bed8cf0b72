"""How long a request refused for a full queue should wait: the work queued ahead of it
over the pace at which the worker has been finishing work.

Arithmetic only, no torch and no clock of its own: the worker (app/engine/worker.py)
reports when each job or task ends and asks for an estimate when it refuses one.
"""

from __future__ import annotations

import math
from collections import deque


class QueuePace:
    """Recent completion times of one model's worker, and the Retry-After they imply.

    A full queue empties as fast as the worker finishes work (each job that ends lets
    one waiting job in), so the queue's length over the recent completion rate is how
    long until all that waits has been admitted and a retry finds room. Rates come from
    completions within `HORIZON_S`, so a stalled worker's old pace does not count.
    """

    WINDOW = 64  # completions remembered
    HORIZON_S = 60.0  # completions older than this say nothing about the pace now
    MIN_S = 1  # Retry-After's bounds, in whole seconds (RFC 9110 delay-seconds)
    MAX_S = 30  # past this a client is better served giving up (or trying another replica)
    UNKNOWN_S = 5  # no pace measured yet (a burst before the first job ended)

    def __init__(self) -> None:
        self._ends: deque[float] = deque(maxlen=self.WINDOW)

    def finished(self, now: float) -> None:
        """A job or task ended at `now` (seconds, a monotonic clock)."""
        self._ends.append(now)

    def rate(self, now: float) -> float | None:
        """Completions per second over the recent window; None while fewer than 2 are known."""
        recent = [t for t in self._ends if now - t <= self.HORIZON_S]
        if len(recent) < 2:
            return None
        # Up to `now`, not to the last completion: a worker that has stopped finishing
        # work has a falling rate, not the rate of its last burst.
        return (len(recent) - 1) / max(now - recent[0], 1e-3)

    def retry_after(self, waiting: int, now: float) -> int:
        """Whole seconds until `waiting` queued items are likely admitted, in [MIN_S, MAX_S]."""
        rate = self.rate(now)
        if rate is None:
            return self.UNKNOWN_S
        return max(self.MIN_S, min(self.MAX_S, math.ceil(waiting / rate)))
