"""A Server-Sent Events parser that follows the WHATWG rules, for reading our streams."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class SSEEvent:
    """One dispatched event: its type ("message" unless named) and its data."""

    event: str
    data: str


def parse_lines(lines: Iterable[str]) -> Iterator[SSEEvent | str]:
    """Events from decoded lines (without line breaks); comments come back as plain strings."""
    data: list[str] = []
    event = ""
    for line in lines:
        if line == "":
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            data, event = [], ""
            continue
        if line.startswith(":"):
            yield line[1:].removeprefix(" ")
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value


def parse(raw: str) -> list[SSEEvent | str]:
    """Parse a whole stream body."""
    return list(parse_lines(re.split(r"\r\n|\r|\n", raw)))


def stream_events(response) -> Iterator[SSEEvent | str]:
    """Events from a streaming `requests` response, as they arrive."""
    return parse_lines(_lines(response))


def _lines(response) -> Iterator[str]:
    # Each HTTP chunk as it arrives (requests' own iter_lines mangles blank lines).
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8")
    if pending:
        yield pending.decode("utf-8")


def message_data(events: Iterable[SSEEvent | str]) -> list[str]:
    """The data of the unnamed events, in order."""
    return [e.data for e in events if isinstance(e, SSEEvent) and e.event == "message"]
