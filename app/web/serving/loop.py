"""The one loop that serves a run, for every API: streamed through a `Framer`, or folded
into one answer; and what both APIs check and translate alike.

As in LitServe's `LitSpec` split, the loop decides everything that happens (when the
headers go out, pings, the client leaving, failures, cancelling, accounting) and the
framer only encodes: the native SSE framer and OpenAI's chunk framer cannot drift on
any of it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Protocol

from app import models
from app.config import Settings
from app.engine import DoneEvent, TokenEvent
from app.errors import APIError, BadRequest, GenerationFailed, ShuttingDown, translate
from app.models import LoadedModel, ModelProfile, ModelSpec, progress
from app.web import sse
from app.web.serving.run import Choice, Run

log = logging.getLogger(__name__)

PING = sse.format_comment("ping")  # sent after each ping interval of silence
PROGRESS_SECONDS = 0.5  # how often a stream waiting for its model hears how the load goes


class Framer(Protocol):
    """An API's wire format for a streamed run; it encodes, and decides nothing."""

    def opening(self, run: Run) -> Iterator[bytes]:
        """What goes out once the jobs are queued, before their first event."""
        ...

    def frame(self, choice: Choice, event: TokenEvent | DoneEvent) -> Iterator[bytes]:
        """One event of one choice (a "shutdown" end is followed by `fail`)."""
        ...

    def closing(self, run: Run) -> Iterator[bytes]:
        """The end of a stream whose jobs all finished."""
        ...

    def fail(self, error: APIError) -> Iterator[bytes]:
        """The end of a stream that failed after its headers went out."""
        ...


def stream(
    run: Run,
    framer: Framer,
    ping_seconds: float,
    client_gone: Callable[[], bool],
    cold: ModelSpec | None = None,
    progress_pings: bool = True,
) -> Iterator[bytes]:
    """The response body of a streamed run; `cold` is the model to wait for (with
    pings, carrying the load's progress unless `progress_pings` is off) and then
    submit the run to, when the run has not been submitted yet.

    Runs after the request context is gone: everything it needs is passed in.
    """
    try:
        yield b""  # the headers go out now, before the prompt is processed
        if cold is not None:  # the weights were not loaded when the request came
            lm = yield from await_model(cold, ping_seconds, progress_pings)
            run.submit(lm)
        yield from framer.opening(run)
        for item in run.events(ping_seconds, client_gone):
            if item is None:
                yield PING
                continue
            choice, event = item
            yield from framer.frame(choice, event)
            if isinstance(event, DoneEvent) and event.finish_reason == "shutdown":
                raise ShuttingDown  # a stop, not an ending: the framer's `fail` says why
        if not run.client_left:  # nobody is left to read an ending
            yield from framer.closing(run)
    except Exception as exc:
        run.failed = True
        yield from framer.fail(failure(exc))
    finally:
        run.close()


def fold(run: Run, ping_seconds: float, client_gone: Callable[[], bool]) -> None:
    """Read a submitted run to its end, for an answer in one piece; raise what ended it
    early (GenerationFailed, ClientClosedRequest, ShuttingDown). Accounts either way."""
    try:
        for _ in run.events(ping_seconds, client_gone):
            pass  # the run folds each event into its choice
        run.raise_for_failure()
    finally:
        run.close()


def await_model(
    spec: ModelSpec, ping_seconds: float, progress_pings: bool = True
) -> Generator[bytes, None, LoadedModel]:
    """Wait for a model that is loading; its value (`yield from`) is the loaded model.
    Raises what the load raised.

    Yields, each time the load's progress has changed (checked every PROGRESS_SECONDS),
    a progress comment, and a plain ping after each `ping_seconds` of silence. A
    progress comment is one SSE comment line, which SSE parsers skip:
    `: progress {"model_id": ..., "phase": ..., "done_bytes": ..., "total_bytes": ...,
    "files": [{"name": ..., "done_bytes": ..., "total_bytes": ...}]}` (GET /models'
    `loading_progress` entry, as compact JSON). With `progress_pings` off, only pings.
    """
    last_sent, last_shown = time.monotonic(), None
    tick = min(ping_seconds, PROGRESS_SECONDS) if progress_pings else ping_seconds
    while True:
        try:
            return models.cache.get(spec, timeout=tick)
        except TimeoutError:
            pass
        tracker = progress.of(spec.model_id) if progress_pings else None
        shown = tracker.snapshot() if tracker is not None else None
        if shown is not None and shown != last_shown:
            last_shown = shown
            yield sse.format_comment("progress " + json.dumps(shown, separators=(",", ":")))
        elif time.monotonic() - last_sent < ping_seconds:
            continue
        else:
            yield PING
        last_sent = time.monotonic()


def failure(exc: Exception) -> APIError:
    """What a client is told of `exc`: its APIError, or (logged here, with its
    traceback) an internal error for anything unexpected."""
    translated = translate(exc)
    if translated is None:
        log.exception("stream failed", exc_info=exc)
        return GenerationFailed("internal server error")
    return translated


def check_limit(max_tokens: int, settings: Settings, field: str) -> None:
    """Refuse (400, naming `field`) more new tokens than LLMVIZ_MAX_NEW_TOKENS allows."""
    if max_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"{field} must be at most {settings.max_new_tokens} (LLMVIZ_MAX_NEW_TOKENS)",
            param=field,
        )


def check_context(profile: ModelProfile, prompt_tokens: int, max_tokens: int, field: str) -> None:
    """Refuse (400, naming `field`) a prompt that, with `max_tokens` more, overflows the
    model's context."""
    try:
        profile.check_context(prompt_tokens, max_tokens)
    except APIError as exc:
        raise BadRequest(exc.message.replace("max_new_tokens", field), param=field) from None
