"""The generation engine: one OS thread per loaded model, fed by a queue.

Request handlers never run torch. They submit a `GenerationJob` (app/jobs.py)
to the model's `ModelWorker` and read its events from the job. The worker checks each
job's cancel flag before every decoding step, so a request whose reader has
gone stops within one step.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.concurrency import Mailbox, NativeQueue, native_lock, start_native_thread
from app.errors import Overloaded
from app.generation import DecodeBatch
from app.jobs import GenerationJob

log = logging.getLogger(__name__)


class WorkerClosed(RuntimeError):
    """The model was unloaded before the job could be queued; load it again."""


_WAKE = object()  # put in the inbox so an idle worker looks at its task queue
_GATHER_SECONDS = 0.005  # how long an idle worker waits for the next request of a burst


class ModelTask:
    """A function to run on the model's thread between two decoding steps (an inspection)."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self._fn = fn
        self._mailbox = Mailbox()

    def run(self, model: Any, tokenizer: Any) -> None:
        """Call the function with the model; deliver its result or its exception."""
        try:
            self._mailbox.put((True, self._fn(model, tokenizer)))
        except Exception as exc:
            self._mailbox.put((False, exc))

    def result(self) -> Any:
        """Wait for the task (blocking only the calling greenlet) and return its result."""
        while True:
            try:
                ok, value = self._mailbox.get(timeout=60.0)
            except TimeoutError:
                continue
            if ok:
                return value
            raise value


@dataclass
class _Group:
    """A decode batch and the jobs of its rows, in row order."""

    batch: DecodeBatch
    jobs: list[GenerationJob] = field(default_factory=list)


class ModelWorker:
    """Owns one model on its own OS thread and decodes its jobs in batches.

    Up to `max_active` jobs share one forward pass per step (models whose KV
    cache cannot be merged, e.g. sliding-window ones, get one batch per job,
    stepped in turn); further jobs wait in a queue of at most `max_queue`.
    A job joins at the next step, after its prefill, and leaves when it ends.
    """

    def __init__(
        self, model: Any, tokenizer: Any, eos_ids: frozenset[int], max_active: int, max_queue: int
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._max_active = max_active
        self._max_queue = max_queue
        self._inbox = NativeQueue()
        self._tasks = NativeQueue()
        self._lock = native_lock()
        self._closed = False
        self._cancel_new: str | None = None  # a reason: cancel new jobs as they arrive
        self._running: list[GenerationJob] = []  # admitted and not yet ended, for stats
        self._groups: list[_Group] = []
        self._alive = native_lock()  # held by the thread while it runs; see join()
        self._alive.acquire()
        self.queued = 0
        self.completed_jobs = 0
        self.last_finished = 0.0  # wall-clock time the last job ended
        self.decode_steps = 0  # batched forward passes
        self.prefills = 0
        self._finished_tokens = 0
        start_native_thread(self._serve)

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, or refuse it when the queue is full or the worker closed."""
        self._reserve_place()
        self._inbox.put(job)

    def submit_task(self, task: ModelTask) -> None:
        """Queue a task to run before the next decoding step."""
        self._reserve_place()
        self._tasks.put(task)
        self._inbox.put(_WAKE)

    def _reserve_place(self) -> None:
        with self._lock:
            if self._closed:
                raise WorkerClosed
            if self.queued >= self._max_queue:
                raise Overloaded(
                    f"too much queued work for this model (LLMVIZ_MAX_QUEUE={self._max_queue})"
                )
            self.queued += 1

    def cancel_all(self, reason: str = "cancelled") -> None:
        """End every running job, and every queued one as it is reached."""
        with self._lock:
            for job in self._running:
                job.cancel(reason)
            self._cancel_new = reason

    def close(self, cancel: bool = False) -> None:
        """Stop taking jobs; finish (or with `cancel`, abandon) the accepted ones, then exit."""
        if cancel:
            self.cancel_all()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inbox.put(None)

    def join(self, timeout: float) -> bool:
        """Wait until the thread has exited; False if it is still running after `timeout`."""
        if self._alive.acquire(timeout=timeout):
            self._alive.release()
            return True
        return False

    def stats(self) -> dict[str, int]:
        """Counters for /models and the tests."""
        with self._lock:
            running = list(self._running)
            return {
                "active": len(running),
                "queued": self.queued,
                "generated_tokens": self._finished_tokens + sum(job.generated for job in running),
                "completed_jobs": self.completed_jobs,
                "decode_steps": self.decode_steps,
                "prefills": self.prefills,
            }

    def _serve(self) -> None:
        closing = False
        while not (closing and not self._running):
            closing = self._admit() or closing
            self._run_tasks()
            for group in list(self._groups):
                self._step(group)
        self._release()
        self._alive.release()

    def _admit(self) -> bool:
        """Prefill queued jobs into a batch; True when the close marker was reached."""
        arrived, closing = [], False
        idle = not self._running
        while len(self._running) + len(arrived) < self._max_active:
            try:
                job = self._next_arrival(idle, arrived)
            except queue.Empty:
                break
            if job is None:
                closing = True
                break
            if job is _WAKE:
                break
            arrived.append(job)
        if arrived:
            self._start(arrived)
        return closing

    def _next_arrival(self, idle: bool, arrived: list[GenerationJob]) -> Any:
        if not idle:
            return self._inbox.get_nowait()  # running jobs must not wait for new arrivals
        if not arrived:
            return self._inbox.get()  # nothing to do until something arrives
        # Idle, and requests are arriving: a burst (several tabs, a benchmark) that
        # comes within a few milliseconds is prefilled in one pass instead of several.
        return self._inbox.get(timeout=_GATHER_SECONDS)

    def _start(self, jobs: list[GenerationJob]) -> None:
        """Prefill jobs that arrived together in one forward pass; they join at the next step."""
        with self._lock:
            self.queued -= len(jobs)
            self._running += jobs
        for job in jobs:
            if self._cancel_new:
                job.cancel(self._cancel_new)
            job.begin(self._tokenizer, self._eos_ids, self._model.device)
            if job.cancelled:
                job.end_cancelled()
                self._retire(job)
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        group = next((g for g in self._groups if g.batch.mergeable), None)
        if group is None:
            group = _Group(DecodeBatch(self._model))
            self._groups.append(group)
        try:
            step = group.batch.prefill([j.prompt_ids for j in jobs], [j.watch for j in jobs])
            self.prefills += 1
        except Exception as exc:  # the thread must survive any one request
            self._fail(jobs, exc)
            for job in jobs:
                self._retire(job)
            if not group.jobs:
                self._groups.remove(group)
            return
        first = len(group.jobs)
        group.jobs += jobs
        ended = [
            first + i
            for i, job in enumerate(jobs)
            if not self._take(job, step.logits[i], step.attention[i])
        ]
        self._remove(group, ended)

    def _step(self, group: _Group) -> None:
        """One forward pass for every row of the group; retire the rows that ended."""
        cancelled = [i for i, job in enumerate(group.jobs) if job.cancelled]
        for i in cancelled:
            group.jobs[i].end_cancelled()
        self._remove(group, cancelled)
        if not group.jobs:
            return
        try:
            step = group.batch.step([job.last_token for job in group.jobs])
            self.decode_steps += 1
        except Exception as exc:
            self._fail(group.jobs, exc)
            self._remove(group, list(range(len(group.jobs))))
            return
        ended = [
            i
            for i, job in enumerate(group.jobs)
            if not self._take(job, step.logits[i], step.attention[i])
        ]
        self._remove(group, ended)

    def _take(self, job: GenerationJob, logits: Any, attention: Any) -> bool:
        try:
            return job.take(logits, attention)
        except Exception as exc:
            self._fail([job], exc)
            return False

    def _remove(self, group: _Group, rows: list[int]) -> None:
        if not rows:
            return
        group.batch.remove(rows)
        for i in rows:
            self._retire(group.jobs[i])
        leaving = set(rows)
        group.jobs = [job for i, job in enumerate(group.jobs) if i not in leaving]
        if not group.jobs:
            self._groups.remove(group)

    def _fail(self, jobs: list[GenerationJob], exc: Exception) -> None:
        log.exception("generation failed", exc_info=exc)
        for job in jobs:
            job.fail(f"generation failed: {type(exc).__name__}: {exc}")

    def _run_tasks(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self.queued -= 1
            task.run(self._model, self._tokenizer)

    def _retire(self, job: GenerationJob) -> None:
        with self._lock:
            self._running.remove(job)
            self._finished_tokens += job.generated
            self.completed_jobs += 1
            self.last_finished = time.time()

    def _release(self) -> None:
        device = getattr(self._model, "device", None)
        self._model = self._tokenizer = None
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
