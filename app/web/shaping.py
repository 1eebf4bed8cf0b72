"""Shaping native answers: JSON bodies through the response models, and a generation's
tokens and end as /generate's details and the stream's `token` and `done` events show
them (one shape for both, so the two endpoints cannot drift apart)."""

from __future__ import annotations

import math
from typing import Any, Literal, cast

from flask import Response, jsonify
from pydantic import BaseModel

from app.engine import DoneEvent, TokenEvent
from app.web.answers import (
    GenerateResponse,
    GenerationDetails,
    GenerationEnd,
    TokenAlternative,
    TokenDetail,
)
from app.web.serving.run import Choice

FinishReason = Literal["length", "eos", "stop", "cancelled", "shutdown"]


def reply(answer: BaseModel) -> Response:
    """A JSON response with the fields of `answer` that were set."""
    return jsonify(answer.model_dump(mode="json", exclude_unset=True))


def generate_answer(choice: Choice, full_text: bool, details: bool) -> GenerateResponse:
    """/generate's answer for its run's one choice, after `Run.raise_for_failure`."""
    text = choice.prompt.text + choice.text if full_text else choice.text
    if not details or choice.done is None:
        return GenerateResponse(text=text)
    tokens = [token_detail(token) for token in choice.tokens]
    shown = GenerationDetails(**end_of(choice.done).model_dump(), tokens=tokens)
    return GenerateResponse(text=text, details=shown)


def token_detail(event: TokenEvent) -> TokenDetail:
    """One generated token, as `details.tokens[i]` and the stream's `token` events show it."""
    # Unset unless watched: `attention` is left out of answers that did not ask for it.
    watched: dict[str, Any] = {} if event.attention is None else {"attention": event.attention}
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
        finish_reason=cast(FinishReason, done.finish_reason),
        prompt_tokens=done.prompt_tokens,
        generated_tokens=done.generated_tokens,
        timing=done.timing,
    )


def _finite(value: float | None) -> float | None:
    # JSON has no infinities; a masked-out token's logprob is reported as null.
    return value if value is None or math.isfinite(value) else None
