"""Framing one generation as Server-Sent Events: plain text events, or `token` and `done`
events with details.

A client must be able to rebuild exactly the text /generate answers from the
events: a plain stream's `data:` fields join to it, and a details stream's
`delta` fields do (held-back text and stop cuts included).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from app.engine import DoneEvent, TokenEvent
from app.errors import APIError
from app.web import sse
from app.web.answers import ErrorResponse, StreamEnd
from app.web.serving.run import Choice, Run
from app.web.shaping import end_of, token_detail

# What JavaScript's String.prototype.trimStart() removes: ECMAScript's WhiteSpace (tab, VT,
# FF, space, NBSP, BOM and every Zs character) and LineTerminator (LF, CR, U+2028, U+2029).
_JS_WHITE_SPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"
    + "".join(map(chr, range(0x2000, 0x200B)))  # U+2000 to U+200A
)


class TextEvents:
    """Cuts the text of a plain stream into `data:` events.

    - A trailing CR waits for the next text: SSE parsers read CR, LF and CRLF each
      as one line break, so a CRLF split across two events would come back as two.
    - With `compat`, for the llm-viz fork (vimarsh244/llm-viz-dash), whose RemoteClient
      splits the stream at blank lines and appends `chunk.slice(5).trimStart()` of each
      event to a `<div>` without `white-space: pre-wrap`:
      - each line break (CRLF, CR or LF) is sent as a space. An event holding one would
        be several `data:` lines, of which that parser shows every `data:` after the
        first as text; and its `<div>` renders a line break as a space anyway.
      - leading white space (all that JavaScript's trimStart() removes) moves to the end
        of the previous event, where trimStart() cannot reach it.
      The fork then shows the text as its `<div>` renders the true text (white space
      collapsed). A standard parser joins the same text, with spaces for line breaks.
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
        text = self._one_line(text)
        blanks = text[: len(text) - len(text.lstrip(_JS_WHITE_SPACE))]
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
        if self._compat and self._carry:  # compat: a CR at the very end, sent as a space
            held, self._carry = held + " ", ""
        events = self._ready([held] if held else [])
        if self._carry:
            events.append(self._carry)
            self._carry = ""
        return events

    def _one_line(self, text: str) -> str:
        """compat: `text` with each line break a space (a CRLF split across two texts too)."""
        text, self._carry = self._carry + text, ""
        if text.endswith("\r"):
            text, self._carry = text[:-1], "\r"
        return sse.LINE_BREAK.sub(" ", text)

    def _ready(self, texts: list[str]) -> list[str]:
        if self._compat:  # no line breaks are left, and a held CR is `_one_line`'s
            return [text for text in texts if text]
        events = []
        for text in texts:
            text, self._carry = self._carry + text, ""
            if text.endswith("\r"):
                text, self._carry = text[:-1], "\r"
            if text:
                events.append(text)
        return events


class StreamFramer:
    """The native API's SSE bytes for a run of one choice (see `serving.loop.Framer`).

    `details`: `token` events and a `done` event; else plain `data:` text (`compat`:
    see `TextEvents`). `echo`: the prompt goes out first (`return_full_text`).
    """

    def __init__(self, details: bool, compat: bool = False, echo: bool = False) -> None:
        self._details = details
        self._echo = echo
        self._text = TextEvents(compat and not details)

    def opening(self, run: Run) -> Iterator[bytes]:
        """The prompt, when echoed."""
        if self._echo:
            yield from self.prompt(run.choices[0].prompt.text)

    def prompt(self, text: str) -> Iterator[bytes]:
        """The prompt, echoed before the generated text."""
        yield from self._plain(self._text.push(text))

    def frame(self, choice: Choice, event: TokenEvent | DoneEvent) -> Iterator[bytes]:
        """The bytes for one event. A "shutdown" end sends its held-back text (plain
        streams only) and leaves the rest to `fail`."""
        shutdown = isinstance(event, DoneEvent) and event.finish_reason == "shutdown"
        if self._details:
            if isinstance(event, TokenEvent):
                yield sse.format_event(_json(token_detail(event)), event="token")
            elif shutdown:  # the `error` event of `fail` is the end: nothing held goes first
                self._text.flush()
            else:
                end = StreamEnd(**end_of(event).model_dump(), delta=event.text)
                yield sse.format_event(_json(end), event="done")
            return
        yield from self._plain(self._text.push(event.text))
        if isinstance(event, DoneEvent) and not shutdown:
            yield from self._plain(self._text.flush())

    def closing(self, run: Run) -> Iterator[bytes]:
        """Nothing: the end went out with the `done` event (or the last text)."""
        return iter(())

    def fail(self, error: APIError) -> Iterator[bytes]:
        """End the stream with an `error` event, after any text still held."""
        yield from self._plain(self._text.flush())
        yield _error(error)

    @staticmethod
    def _plain(texts: list[str]) -> Iterator[bytes]:
        for text in texts:
            yield sse.format_event(text)


def _error(exc: APIError) -> bytes:
    # An error after the stream started: the status code can no longer change.
    return sse.format_event(_json(ErrorResponse(**exc.to_dict())), event="error")


def _json(model: BaseModel) -> str:
    return model.model_dump_json(exclude_unset=True)
