"""The worker: one OS thread per loaded model, fed by a queue.

Request handlers never run torch. They submit a `GenerationJob` (app/engine/job.py)
or a `ModelTask` to the model's `ModelWorker` and read the result from it. The
worker checks each job's cancel flag before every decoding step, so a request
whose reader has gone stops within one step.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import queue
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from app.engine.backlog import QueuePace
from app.engine.contract import CausalLM, Tokenizer, input_device
from app.engine.isolation import fail
from app.engine.job import GenerationJob
from app.engine.lean import LeanStep
from app.engine.running import PassCounters, RunningGroup
from app.engine.threads import Mailbox, NativeQueue, native_lock, start_native_thread

log = logging.getLogger(__name__)


T = TypeVar("T")


class WorkerClosed(RuntimeError):
    """The model was unloaded before the job could be queued; load it again."""


class TaskAbandoned(RuntimeError):
    """The caller stopped waiting for a task (its client went away)."""


class QueueFull(RuntimeError):
    """The worker already holds `max_queue` waiting jobs and tasks; retry in `retry_after` s."""

    def __init__(self, max_queue: int, retry_after: int = QueuePace.UNKNOWN_S) -> None:
        super().__init__(f"too much queued work for this model (LLMVIZ_MAX_QUEUE={max_queue})")
        self.max_queue = max_queue
        self.retry_after = retry_after  # whole seconds: see QueuePace.retry_after


_WAKE = object()  # put in the inbox so an idle worker looks at its task queue
_GATHER_SECONDS = 0.005  # how long an idle worker waits for the next request of a burst


class ModelTask(Generic[T]):
    """A function to run on the model's thread between two decoding steps (an inspection).

    `fn(model, tokenizer)` runs on the worker thread; `result()` returns its value,
    or raises its exception, in the caller.
    """

    def __init__(self, fn: Callable[[CausalLM, Tokenizer], T]) -> None:
        self._fn = fn
        self._mailbox = Mailbox()
        self.cancelled = False  # set by the caller, read by the worker before it runs the task

    def run(self, model: CausalLM, tokenizer: Tokenizer) -> None:
        """Call the function with the model; deliver its result or its exception."""
        if self.cancelled:
            return
        try:
            self._mailbox.put((True, self._fn(model, tokenizer)))
        except Exception as exc:
            self._mailbox.put((False, exc))

    def result(self, gone: Callable[[], bool] = lambda: False, poll_seconds: float = 0.5) -> T:
        """Wait for the task (blocking only the calling greenlet) and return its result.

        Checks `gone()` every `poll_seconds`; once it is true, the task is cancelled
        (if it has not started) and TaskAbandoned is raised.
        """
        while True:
            try:
                ok, value = self._mailbox.get(timeout=poll_seconds)
            except TimeoutError:
                if gone():
                    self.cancelled = True
                    raise TaskAbandoned from None
                continue
            if ok:
                return value
            raise value


class ModelWorker:
    """Owns one model on its own OS thread and decodes its jobs in running groups.

    Up to `max_active` jobs share one forward pass per step, in one RunningGroup
    (app/engine/running.py); models whose KV cache cannot be merged, e.g.
    sliding-window ones, get one group per job, stepped in turn. Further jobs wait
    in a queue of at most `max_queue`.
    A job joins at the next step, after its prefill, and leaves when it ends.
    Jobs that arrive at an idle worker are prefilled together in one pass; a job
    that joins running rows is prefilled at most `prefill_chunk` prompt tokens
    between two of their steps, so a long prompt does not stall them.
    `fused_step`: decode a lone row with the fused step in C where the model has one
    (app/engine/lean.py, LLMVIZ_FUSED_STEP).
    """

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer,
        eos_ids: frozenset[int],
        max_active: int,
        max_queue: int,
        prefill_chunk: int = 128,
        fused_step: bool = True,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._max_active = max_active
        self._max_queue = max_queue
        self._prefill_chunk = prefill_chunk
        self._inbox = NativeQueue()
        self._tasks = NativeQueue()
        self._lock = native_lock()
        self._closed = False
        self._cancel_new: str | None = None  # a reason: cancel new jobs as they arrive
        self._running: list[GenerationJob] = []  # admitted and not yet ended, for stats
        self._groups: list[RunningGroup] = []
        # Proved on the model now, as part of its load, not on the first request's time.
        self._lean = LeanStep.make(model, fused=fused_step)
        fused = None if self._lean is None else self._lean.fused
        self.fused_step = fused is not None
        self.fused_step_bytes = 0 if fused is None else fused.copied_bytes  # its own weights
        self._alive = native_lock()  # held by the thread while it runs; see join()
        self._alive.acquire()
        self.queued = 0
        self.completed_jobs = 0
        self.last_finished = 0.0  # wall-clock time the last job ended
        self._pace = QueuePace()  # when jobs and tasks end: sizes a refusal's Retry-After
        self.passes = PassCounters()
        self._finished_tokens = 0
        start_native_thread(self._serve)

    def submit(self, work: GenerationJob | ModelTask) -> None:
        """Queue a job (decoded in a running group) or a task (run before the next step).

        Raises QueueFull when `max_queue` items already wait, WorkerClosed once closed.
        """
        self._reserve_place()
        if isinstance(work, ModelTask):
            self._tasks.put(work)
            self._inbox.put(_WAKE)
        else:
            self._inbox.put(work)

    def _reserve_place(self) -> None:
        with self._lock:
            if self._closed:
                raise WorkerClosed
            if self.queued >= self._max_queue:
                wait = self._pace.retry_after(self.queued, time.monotonic())
                raise QueueFull(self._max_queue, wait)
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
                "decode_steps": self.passes.decode_steps,
                "prefills": self.passes.prefills,
            }

    def _serve(self) -> None:
        closing = False
        while not (closing and not self._running):
            closing = self._round() or closing
        self._release()
        self._alive.release()

    def _round(self) -> bool:
        """Admit, run tasks, then one round of every group; True when the close marker came.
        (A method of its own: no local may keep a group, and so the model, alive past it.)"""
        closing = self._admit()
        self._run_tasks()
        for group in list(self._groups):
            try:
                self._step(group)
            except Exception as exc:  # a fault of ours, outside any one pass: see _abandon
                self._abandon(group, exc)
        return closing

    def _admit(self) -> bool:
        """Admit queued jobs into a running group; True when the close marker was reached."""
        arrived: list[GenerationJob] = []
        closing = False
        idle = not self._running
        while len(self._running) + len(arrived) < self._max_active:
            try:
                job = self._next_arrival(idle, arrived)
            except queue.Empty:
                break
            if job is None:
                closing = True
                break
            if not isinstance(job, GenerationJob):
                break  # _WAKE: a task waits
            arrived.append(job)
        if arrived:
            self._start(arrived)
        return closing

    def _next_arrival(self, idle: bool, arrived: list[GenerationJob]) -> GenerationJob | object:
        if not idle:
            return self._inbox.get_nowait()  # running jobs must not wait for new arrivals
        if not arrived:
            return self._inbox.get()  # nothing to do until something arrives
        # Idle, and requests are arriving: a burst (several tabs, a benchmark) that
        # comes within a few milliseconds is prefilled in one pass instead of several.
        return self._inbox.get(timeout=_GATHER_SECONDS)

    def _start(self, jobs: list[GenerationJob]) -> None:
        """Prefill jobs that arrived together at an idle group in one forward pass (they join
        at the next step), or queue them to join a busy group (prefilled by `_step`)."""
        with self._lock:
            self.queued -= len(jobs)
            self._running += jobs
        for job in jobs:
            if self._cancel_new:
                job.cancel(self._cancel_new)
            try:
                job.begin(self._tokenizer, self._eos_ids, input_device(self._model))
            except Exception as exc:  # this request's own setup failed: only it ends
                fail(job, exc)
                self._retire(job)
                continue
            if job.cancelled:
                job.end_cancelled()
                self._retire(job)
        jobs = [job for job in jobs if job in self._running and not job.cancelled]
        # Jobs join the first group whose rows can take them (plain or intervened alike:
        # interventions are masked to their rows), else a new one.
        joining: dict[int, tuple[RunningGroup, list[GenerationJob]]] = {}
        for job in jobs:
            group = next((g for g in self._groups if g.takes(job)), None)
            if group is None:  # (not `or`: a group with no rows yet has len 0)
                group = self._group()
            joining.setdefault(id(group), (group, []))[1].append(job)
        for group, members in joining.values():
            if group.busy:
                group.wait(members)
                continue
            try:
                ended = group.add(members)
            except Exception as exc:  # a bug of ours: end these requests, keep serving
                ended = [job for job in members if not job.ended]
                for job in ended:
                    fail(job, exc)
            self._retire_all(group, ended)

    def _group(self) -> RunningGroup:
        """A new group, for jobs that no group's rows can take."""
        group = RunningGroup(self._model, self.passes, self._prefill_chunk, self._lean)
        self._groups.append(group)
        return group

    def _step(self, group: RunningGroup) -> None:
        """One round of the group (see RunningGroup.advance); retire the jobs that ended."""
        self._retire_all(group, group.advance())

    def _abandon(self, group: RunningGroup, exc: Exception) -> None:
        """End a group whose round raised where no pass was to blame (a bug): its requests
        end with the error instead of waiting forever, and the worker goes on serving."""
        self._groups.remove(group)
        others = {id(job) for g in self._groups for job in g.members}
        orphans = [job for job in self._running if id(job) not in others]
        log.error("a decoding round failed; ending its %d requests", len(orphans), exc_info=exc)
        for job in orphans:  # its members, and any that ended in the round but were not retired
            if not job.ended:
                fail(job, exc)
            self._retire(job)

    def _retire_all(self, group: RunningGroup, ended: list[GenerationJob]) -> None:
        for job in ended:
            self._retire(job)
        if not group.busy and group in self._groups:
            self._groups.remove(group)

    def _run_tasks(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self.queued -= 1
            task.run(self._model, self._tokenizer)
            with self._lock:
                self._pace.finished(time.monotonic())

    def _retire(self, job: GenerationJob) -> None:
        with self._lock:
            self._running.remove(job)
            self._finished_tokens += job.generated
            self.completed_jobs += 1
            self.last_finished = time.time()
            self._pace.finished(time.monotonic())

    def _release(self) -> None:
        """Drop the model (this worker holds its only reference) and give its memory back."""
        device = getattr(self._model, "device", None)
        del self._model, self._tokenizer, self._lean  # the lean step holds the model too
        gc.collect()  # weights kept alive by a reference cycle are freed now, not some day
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()
        _trim_heap()


def _trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's `malloc_trim`; elsewhere nothing).

    glibc serves allocations under its mmap threshold from its heaps, and that threshold
    rises (to 32 MiB) each time a larger block is freed; so weights allocated at load
    (packed layers, app/models/packing.py) can sit in a heap, and once freed stay in the
    process's resident memory until trimmed.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)
