"""OpenAI's stream format for a run (see `serving.loop.Framer`): `data: {chunk}` events,
each from the endpoint's view, and `data: [DONE]` last, after a failure too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from app.engine import DoneEvent, TokenEvent
from app.errors import APIError
from app.web import sse
from app.web.serving.run import Choice, Run
from app.web.v1.errors import error_body
from app.web.v1.views import View, usage

DONE = sse.format_event("[DONE]")  # the end of every stream, after its last chunk


class ChunkFramer:
    """The chunks of `view`; `include_usage` (stream_options) adds a usage chunk at the end
    and `"usage": null` to every other chunk, as OpenAI does."""

    def __init__(self, view: View, include_usage: bool) -> None:
        self.view = view
        self.include_usage = include_usage

    def opening(self, run: Run) -> Iterator[bytes]:
        """Each choice's first chunks (a chat's role; a completion's echoed prompt)."""
        for choice in run.choices:
            yield from map(self._data, self.view.opening(choice))

    def frame(self, choice: Choice, event: TokenEvent | DoneEvent) -> Iterator[bytes]:
        """The chunks of one event; a "shutdown" end has none (an error chunk follows)."""
        if isinstance(event, DoneEvent) and event.finish_reason == "shutdown":
            return
        yield from map(self._data, self.view.chunks(choice, event))

    def closing(self, run: Run) -> Iterator[bytes]:
        """The usage chunk when asked for, then [DONE]."""
        if self.include_usage:
            yield self._data({**self.view.envelope([], chunk=True), "usage": usage(run.choices)})
        yield DONE

    def fail(self, error: APIError) -> Iterator[bytes]:
        """An error chunk in OpenAI's error shape, then [DONE]."""
        yield sse.format_event(json.dumps(error_body(error.status, error.message, error.code)))
        yield DONE

    def _data(self, chunk: dict[str, Any]) -> bytes:
        if self.include_usage:
            chunk.setdefault("usage", None)  # OpenAI: null on all but the usage chunk
        return sse.format_event(json.dumps(chunk, ensure_ascii=False))
