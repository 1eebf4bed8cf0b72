"""Shaping answers: JSON bodies through the response models, and engine events as SSE.

A generation's events are read once, by `follow`; `/generate` folds them into one
answer with a `Transcript`, and `/generate/stream` frames each as it comes, so
the two endpoints cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flask import Response, jsonify
from pydantic import BaseModel

from app.engine import DoneEvent, ErrorEvent, Event, GenerationJob, TokenEvent
from app.errors import ClientClosedRequest, GenerationFailed, ShuttingDown
from app.web.answers import (
    GenerateResponse,
    GenerationDetails,
    GenerationEnd,
    TokenAlternative,
    TokenDetail,
)


def reply(answer: BaseModel) -> Response:
    """A JSON response with the fields of `answer` that were set."""
    return jsonify(answer.model_dump(mode="json", exclude_unset=True))


def follow(
    job: GenerationJob, ping_seconds: float, client_gone: Callable[[], bool] = lambda: False
) -> Iterator[Event | None]:
    """The job's events until it ends (None every `ping_seconds` of silence).

    Stops early, and cancels the job, when `client_gone()` turns true or the
    caller stops iterating (a disconnect arrives as GeneratorExit).
    """
    try:
        for event in job.events(ping_seconds):
            if client_gone():
                return
            yield event
    finally:
        job.cancel()  # a no-op once the job has ended


@dataclass
class Transcript:
    """The fold of one generation's events: its text, its tokens, and how it ended."""

    prompt: str
    pieces: list[str] = field(default_factory=list)
    tokens: list[TokenEvent] = field(default_factory=list)
    done: DoneEvent | None = None
    error: ErrorEvent | None = None

    def add(self, event: Event | None) -> None:
        """Take in one event (None, a ping, changes nothing)."""
        if isinstance(event, TokenEvent):
            self.tokens.append(event)
        elif isinstance(event, DoneEvent):
            self.done = event
        elif isinstance(event, ErrorEvent):
            self.error = event
            return
        if event is not None:
            self.pieces.append(event.text)

    @property
    def text(self) -> str:
        """The generated text, stop strings cut, as a plain stream sends it."""
        return "".join(self.pieces)

    def raise_for_failure(self) -> None:
        """Raise what ended the generation early: a failure or the server's shutdown."""
        if self.error is not None:
            raise GenerationFailed(self.error.message)
        if self.done is None:  # the reader stopped early: the client went away
            raise ClientClosedRequest
        if self.done.finish_reason == "shutdown":
            raise ShuttingDown

    def answer(self, full_text: bool, details: bool) -> GenerateResponse:
        """The /generate answer (call after `raise_for_failure`)."""
        text = self.prompt + self.text if full_text else self.text
        if not details:
            return GenerateResponse(text=text)
        shown = GenerationDetails(**end_of(self.done).model_dump(), tokens=self.token_details())
        return GenerateResponse(text=text, details=shown)

    def token_details(self) -> list[TokenDetail]:
        """Every token so far, as `details.tokens` shows them."""
        return [token_detail(token) for token in self.tokens]


def token_detail(event: TokenEvent) -> TokenDetail:
    """One generated token, as `details.tokens[i]` and the stream's `token` events show it."""
    watched = {} if event.attention is None else {"attention": event.attention}
    return TokenDetail(
        id=event.token_id,
        text=event.piece,
        delta=event.text,
        logprob=_finite(event.logprob),
        special=event.special,
        top_logprobs=[
            TokenAlternative(id=alt.token_id, text=alt.text, logprob=_finite(alt.logprob))
            for alt in event.top
        ],
        **watched,
    )


def end_of(done: DoneEvent) -> GenerationEnd:
    """How a generation ended, as /generate's details and the stream's `done` event say it."""
    return GenerationEnd(
        finish_reason=done.finish_reason,
        prompt_tokens=done.prompt_tokens,
        generated_tokens=done.generated_tokens,
        timing=done.timing,
    )


def _finite(value: float | None) -> float | None:
    # JSON has no infinities; a masked-out token's logprob is reported as null.
    return value if value is None or math.isfinite(value) else None
