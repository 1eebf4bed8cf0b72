"""What a generation job emits, in order: `TokenEvent* (DoneEvent | ErrorEvent)`.

These plain dataclasses are the whole interface between the engine and whoever
reads a job: the web layer frames them as SSE or folds them into one JSON answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINISH_REASONS = ("length", "eos", "stop", "cancelled", "shutdown")


@dataclass(frozen=True)
class Alternative:
    """A token the model could have chosen at this step."""

    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token.

    `text` is what a plain stream sends (held back near a possible stop string,
    "" mid-character); `piece` is the text the token itself completes.
    """

    token_id: int
    text: str
    piece: str
    special: bool
    logprob: float | None = None
    top: tuple[Alternative, ...] = ()
    attention: dict[str, Any] | None = None  # an encoded [layers, heads, keys] tensor


@dataclass(frozen=True)
class DoneEvent:
    """The generation ended; `text` is the last text to send (held back until now).

    `finish_reason` is one of FINISH_REASONS; `timing` holds `queue_ms`,
    `prefill_ms`, `ttft_ms`, `total_ms` (milliseconds) and `tokens_per_s`.
    """

    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    text: str = ""
    timing: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorEvent:
    """The generation failed after it started; no event follows. `status` and `code` are
    what a client is told (a remote model's failure is not this server's 500)."""

    message: str
    status: int = 500
    code: str = "generation_failed"


Event = TokenEvent | DoneEvent | ErrorEvent
