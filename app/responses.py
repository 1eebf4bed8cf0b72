"""Shaping engine events into JSON answers and SSE events."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from app import sse
from app.errors import APIError, GenerationFailed, ShuttingDown
from app.jobs import DoneEvent, ErrorEvent, Event, TokenEvent


def token_json(event: TokenEvent) -> dict[str, Any]:
    """One generated token, as `details.tokens[i]` and the stream's `token` events show it."""
    shown = {
        "id": event.token_id,
        "text": event.piece,
        "logprob": _finite(event.logprob),
        "special": event.special,
        "top_logprobs": [
            {"id": alt.token_id, "text": alt.text, "logprob": _finite(alt.logprob)}
            for alt in event.top
        ],
    }
    if event.attention is not None:
        shown["attention"] = event.attention
    return shown


def done_json(event: DoneEvent) -> dict[str, Any]:
    """How a generation ended: reason, counts and timing."""
    return {
        "finish_reason": event.finish_reason,
        "prompt_tokens": event.prompt_tokens,
        "generated_tokens": event.generated_tokens,
        "timing": event.timing,
    }


def details(done: DoneEvent, tokens: list[TokenEvent]) -> dict[str, Any]:
    """The `details` object of a /generate answer."""
    return {**done_json(done), "tokens": [token_json(token) for token in tokens]}


def stream_event(event: Event | None, with_details: bool) -> Iterator[bytes]:
    """The SSE bytes for one engine event (nothing for a silent piece)."""
    if event is None:
        yield sse.format_comment("ping")
    elif isinstance(event, ErrorEvent):
        yield error_event(GenerationFailed(event.message))
    elif isinstance(event, TokenEvent) and with_details:
        yield sse.format_event(json.dumps(token_json(event)), event="token")
    else:
        if event.text:
            yield sse.format_event(event.text)
        if isinstance(event, DoneEvent) and event.finish_reason == "shutdown":
            yield error_event(ShuttingDown())
        elif isinstance(event, DoneEvent) and with_details:
            yield sse.format_event(json.dumps(done_json(event)), event="done")


def error_event(exc: APIError) -> bytes:
    """An error after the stream started: the status code can no longer change."""
    return sse.format_event(json.dumps(exc.to_dict()), event="error")


def _finite(value: float | None) -> float | None:
    # JSON has no infinities; a masked-out token's logprob is reported as null.
    return value if value is None or math.isfinite(value) else None
