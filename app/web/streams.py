"""Framing one generation as Server-Sent Events: plain text events, or `token` and `done`
events with details.

A client must be able to rebuild exactly the text /generate answers from the
events: a plain stream's `data:` fields join to it, and a details stream's
`delta` fields do (held-back text and stop cuts included).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydantic import BaseModel

from app.engine import DoneEvent, ErrorEvent, Event, TokenEvent
from app.errors import APIError, GenerationFailed, ShuttingDown
from app.web import sse
from app.web.answers import ErrorResponse, StreamEnd
from app.web.shaping import end_of, token_detail

_LEADING_BLANKS = re.compile(r"^[ \t]*")


class TextEvents:
    """Cuts the text of a plain stream into `data:` events.

    - A trailing CR waits for the next text: SSE parsers read CR, LF and CRLF each
      as one line break, so a CRLF split across two events would come back as two.
    - With `compat`, leading spaces and tabs move to the end of the previous event,
      for parsers that trim the start of each event (the llm-viz fork's RemoteClient
      does `chunk.slice(5).trimStart()`). A standard parser joins the same text.
    """

    def __init__(self, compat: bool) -> None:
        self._compat = compat
        self._pending = ""  # compat: the last event, waiting for the next one's blanks
        self._carry = ""  # a CR that may be the first half of a CRLF

    def push(self, text: str) -> list[str]:
        """The events to send now for `text` (often one; none while text is held)."""
        if not text:
            return []
        if not self._compat:
            return self._ready([text])
        blanks = _LEADING_BLANKS.match(text).group()
        if not self._pending:  # the first text: its blanks have nowhere to go
            self._pending = text
            return []
        self._pending += blanks
        rest = text[len(blanks) :]
        if not rest:
            return []
        ready, self._pending = self._pending, rest
        return self._ready([ready])

    def flush(self) -> list[str]:
        """Everything still held, at the end of the stream."""
        held, self._pending = self._pending, ""
        events = self._ready([held] if held else [])
        if self._carry:
            events.append(self._carry)
            self._carry = ""
        return events

    def _ready(self, texts: list[str]) -> list[str]:
        events = []
        for text in texts:
            text, self._carry = self._carry + text, ""
            if text.endswith("\r"):
                text, self._carry = text[:-1], "\r"
            if text:
                events.append(text)
        return events


class StreamFramer:
    """The SSE bytes for one generation's events, in order."""

    def __init__(self, details: bool, compat: bool = False) -> None:
        self._details = details
        self._text = TextEvents(compat and not details)

    def prompt(self, text: str) -> Iterator[bytes]:
        """The prompt, echoed before the generated text (`return_full_text`)."""
        yield from self._plain(self._text.push(text))

    def frame(self, event: Event | None) -> Iterator[bytes]:
        """The bytes for one engine event; None (silence) becomes a ping comment."""
        if event is None:
            yield sse.format_comment("ping")
        elif isinstance(event, ErrorEvent):
            yield from self.fail(GenerationFailed(event.message))
        elif self._details:
            yield from self._frame_details(event)
        else:
            yield from self._plain(self._text.push(event.text))
            if isinstance(event, DoneEvent):
                yield from self._plain(self._text.flush())
                if event.finish_reason == "shutdown":
                    yield _error(ShuttingDown())

    def fail(self, exc: APIError) -> Iterator[bytes]:
        """End the stream with an `error` event, after any text still held."""
        yield from self._plain(self._text.flush())
        yield _error(exc)

    def _frame_details(self, event: TokenEvent | DoneEvent) -> Iterator[bytes]:
        if isinstance(event, TokenEvent):
            detail = token_detail(event)
            yield sse.format_event(_json(detail), event="token")
        elif event.finish_reason == "shutdown":
            yield _error(ShuttingDown())
        else:
            end = StreamEnd(**end_of(event).model_dump(), delta=event.text)
            yield sse.format_event(_json(end), event="done")

    @staticmethod
    def _plain(texts: list[str]) -> Iterator[bytes]:
        for text in texts:
            yield sse.format_event(text)


def _error(exc: APIError) -> bytes:
    # An error after the stream started: the status code can no longer change.
    return sse.format_event(_json(ErrorResponse(**exc.to_dict())), event="error")


def _json(model: BaseModel) -> str:
    return model.model_dump_json(exclude_unset=True)
