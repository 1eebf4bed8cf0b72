"""SSE framing."""

from __future__ import annotations

import pytest

from app.web.sse import format_comment, format_event
from tests.support.sse_client import SSEEvent, parse


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        " world",
        "two\nlines",
        "\n",
        "\n\nblank lines\n",
        "",
        "  double",
        "data: x",
        "😀 你好",
    ],
)
def test_a_standard_parser_gets_the_text_back(text):
    assert parse(format_event(text).decode()) == [SSEEvent("message", text)]


def test_carriage_returns_cannot_break_the_framing():
    assert parse(format_event("a\r\nb\rc").decode()) == [SSEEvent("message", "a\nb\nc")]


def test_named_event_and_comment():
    raw = (format_comment("ping") + format_event('{"error": "x"}', event="error")).decode()
    assert parse(raw) == ["ping", SSEEvent("error", '{"error": "x"}')]


def test_seed_wire_format():
    assert format_event(" how") == b"data:  how\n\n"
