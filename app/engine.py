"""The generation engine: one OS thread per loaded model, fed by a queue.

Request handlers never run torch. They submit a `GenerationJob` to the model's
`ModelWorker` and read its events from a `Mailbox`. The worker checks the job's
cancel flag between decoding steps, so a request whose reader has gone stops
within one step.
"""

from __future__ import annotations

import logging
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
        """Ask the worker to stop this job at its next step."""
        self.cancelled = True

    def run(self, model: Any, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        """Generate on the worker thread, posting events as tokens are made."""
        decoder = IncrementalDecoder(tokenizer, self.prompt_ids)
        reason = "cancelled" if self.cancelled else "length"
        tokens = (
            () if self.cancelled else sample_tokens(model, self.prompt_ids, self.params, eos_ids)
        )
        for token_id in tokens:
            if self.cancelled:
                reason = "cancelled"
                break
            self.generated += 1
            if token_id in eos_ids and not self.params.ignore_eos:
                reason = "eos"
                break
            self._mailbox.put(TokenEvent(token_id, decoder.push(token_id)))
        self._mailbox.put(DoneEvent(reason, len(self.prompt_ids), self.generated, decoder.flush()))

    def fail(self, message: str) -> None:
        """Report a failure to the waiting handler."""
        self._mailbox.put(ErrorEvent(message))


class ModelWorker:
    """Owns one model on its own OS thread and runs its jobs in arrival order."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: frozenset[int], max_queue: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._max_queue = max_queue
        self._inbox = NativeQueue()
        self._lock = native_lock()
        self._closed = False
        self.queued = 0
        self.completed_jobs = 0
        self._finished_tokens = 0
        self._current: GenerationJob | None = None
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
        current = self._current
        return {
            "active": int(current is not None),
            "queued": self.queued,
            "generated_tokens": self._finished_tokens + (current.generated if current else 0),
            "completed_jobs": self.completed_jobs,
        }

    def _serve(self) -> None:
        while (job := self._inbox.get()) is not None:
            with self._lock:
                self.queued -= 1
                self._current = job
            try:
                job.run(self._model, self._tokenizer, self._eos_ids)
            except Exception as exc:  # the thread must survive any one job
                log.exception("generation failed")
                job.fail(f"generation failed: {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._finished_tokens += job.generated
                    self.completed_jobs += 1
                    self._current = None
        self._release()

    def _release(self) -> None:
        device = getattr(self._model, "device", None)
        self._model = self._tokenizer = None
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
