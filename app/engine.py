"""The generation engine: one OS thread per loaded model, fed by a queue.

Request handlers never run torch. They submit a `GenerationJob` to the model's
`ModelWorker` and read its events from a `Mailbox`. The worker checks each
job's cancel flag before every decoding step, so a request whose reader has
gone stops within one step.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.concurrency import Mailbox, NativeQueue, native_lock, start_native_thread
from app.decoding import IncrementalDecoder
from app.errors import Overloaded
from app.generation import sample_tokens
from app.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token and the text it completes (often "" mid-character)."""

    token_id: int
    text: str


@dataclass(frozen=True)
class DoneEvent:
    """The generation ended; `text` is whatever the decoder still held back."""

    finish_reason: str  # "length", "eos" or "cancelled"
    prompt_tokens: int
    generated_tokens: int
    text: str = ""


@dataclass(frozen=True)
class ErrorEvent:
    """The generation failed after it started."""

    message: str


Event = TokenEvent | DoneEvent | ErrorEvent


class WorkerClosed(RuntimeError):
    """The model was unloaded before the job could be queued; load it again."""


class GenerationJob:
    """One request's generation, shared by the request handler and the worker thread."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.cancelled = False  # set by the handler, read by the worker (atomic under the GIL)
        self.generated = 0  # live count, read by stats()
        self._mailbox = Mailbox()
        self._tokens: Iterator[int] | None = None
        self._decoder: IncrementalDecoder | None = None
        self._eos_ids: frozenset[int] = frozenset()

    # -- the request handler's side --

    def events(self, ping_seconds: float) -> Iterator[Event | None]:
        """Yield events until the job ends; None marks `ping_seconds` of silence."""
        while True:
            try:
                event = self._mailbox.get(ping_seconds)
            except TimeoutError:
                yield None
                continue
            yield event
            if not isinstance(event, TokenEvent):
                return

    def cancel(self) -> None:
        """Ask the worker to stop this job before its next step."""
        self.cancelled = True

    # -- the worker thread's side --

    def begin(self, model: Any, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        """Prepare to generate; the prompt is processed at the first `advance`."""
        self._tokens = sample_tokens(model, self.prompt_ids, self.params, eos_ids)
        self._decoder = IncrementalDecoder(tokenizer, self.prompt_ids)
        self._eos_ids = eos_ids

    def advance(self) -> bool:
        """Make one token and post it; False once the job has ended."""
        if self.cancelled:
            return self._finish("cancelled")
        token_id = next(self._tokens)
        self.generated += 1
        if token_id in self._eos_ids and not self.params.ignore_eos:
            return self._finish("eos")
        self._mailbox.put(TokenEvent(token_id, self._decoder.push(token_id)))
        if self.generated == self.params.max_new_tokens:
            return self._finish("length")
        return True

    def fail(self, message: str) -> None:
        """Report a failure to the waiting handler and drop the job's state."""
        self._tokens = None
        self._mailbox.put(ErrorEvent(message))

    def _finish(self, reason: str) -> bool:
        tail = self._decoder.flush() if self._decoder is not None else ""
        self._tokens = None  # frees the KV cache now, not when the handler lets go
        self._mailbox.put(DoneEvent(reason, len(self.prompt_ids), self.generated, tail))
        return False


class ModelWorker:
    """Owns one model on its own OS thread and interleaves its jobs token by token.

    Up to `max_active` jobs advance in turn, one token each, so every stream
    progresses; further jobs wait in a queue of at most `max_queue`.
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
        self._lock = native_lock()
        self._closed = False
        self._running: list[GenerationJob] = []
        self.queued = 0
        self.completed_jobs = 0
        self._finished_tokens = 0
        start_native_thread(self._serve)

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, or refuse it when the queue is full or the worker closed."""
        with self._lock:
            if self._closed:
                raise WorkerClosed
            if self.queued >= self._max_queue:
                raise Overloaded(
                    "too many queued generations for this model "
                    f"(LLMVIZ_MAX_QUEUE={self._max_queue})"
                )
            self.queued += 1
        self._inbox.put(job)

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread and drop the model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inbox.put(None)

    def stats(self) -> dict[str, int]:
        """Counters for /models and the tests."""
        with self._lock:
            running = list(self._running)
            return {
                "active": len(running),
                "queued": self.queued,
                "generated_tokens": self._finished_tokens + sum(job.generated for job in running),
                "completed_jobs": self.completed_jobs,
            }

    def _serve(self) -> None:
        closing = False
        while not (closing and not self._running):
            closing = self._admit() or closing
            for job in list(self._running):
                if not self._advance(job):
                    self._retire(job)
        self._release()

    def _admit(self) -> bool:
        """Move queued jobs into the running set; True when the close marker was reached."""
        while len(self._running) < self._max_active:
            try:
                # Block only when idle: a running job must not wait for new arrivals.
                job = self._inbox.get(block=not self._running)
            except queue.Empty:
                return False
            if job is None:
                return True
            job.begin(self._model, self._tokenizer, self._eos_ids)
            with self._lock:
                self.queued -= 1
                self._running.append(job)
        return False

    def _advance(self, job: GenerationJob) -> bool:
        try:
            return job.advance()
        except Exception as exc:  # the thread must survive any one job
            log.exception("generation failed")
            job.fail(f"generation failed: {type(exc).__name__}: {exc}")
            return False

    def _retire(self, job: GenerationJob) -> None:
        with self._lock:
            self._running.remove(job)
            self._finished_tokens += job.generated
            self.completed_jobs += 1

    def _release(self) -> None:
        device = getattr(self._model, "device", None)
        self._model = self._tokenizer = None
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
