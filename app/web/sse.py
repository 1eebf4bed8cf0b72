"""Server-Sent Events framing, and nothing else."""

from __future__ import annotations

import re

# nginx buffers proxied responses unless told not to; caches must not keep a live stream.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MIMETYPE = "text/event-stream"

# What SSE reads as the end of a line: CRLF, CR or LF.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_event(data: str, event: str | None = None) -> bytes:
    """One event; a multi-line `data` becomes several `data:` lines, as the standard requires.

    A standard parser joins those lines with "\\n", so CR and CRLF in `data` come back as LF.
    """
    lines = [f"event: {event}"] if event else []
    lines += [f"data: {line}" for line in LINE_BREAK.split(data)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_comment(text: str) -> bytes:
    """A comment line: ignored by parsers, it keeps idle connections open."""
    return f": {text}\n\n".encode()
