"""The native stream's framer and its text splitter, as pure functions of strings."""

from __future__ import annotations

import json
import re

import pytest

from app.engine import DoneEvent, TokenEvent
from app.errors import GenerationFailed, ShuttingDown
from app.web.serving.run import Choice, Prompt, Run
from app.web.streams import StreamFramer, TextEvents
from tests.support.sse_client import SSEEvent, message_data, parse

CHOICE = Choice(0, Prompt(0, "ab", [1, 2]), None)


def token(text: str, piece: str | None = None) -> TokenEvent:
    return TokenEvent(7, text, text if piece is None else piece, False, -0.5)


def done(text: str = "", reason: str = "length") -> DoneEvent:
    return DoneEvent(reason, 2, 3, text, {"ttft_ms": 1.0})


def pushed(splitter: TextEvents, pieces: list[str]) -> list[list[str]]:
    return [splitter.push(piece) for piece in pieces] + [splitter.flush()]


def test_a_cr_ending_a_piece_waits_for_the_next_piece():
    splitter = TextEvents(compat=False)
    assert splitter.push("a\r") == ["a"]  # the CR may be the first half of a CRLF
    assert splitter.push("\nb") == ["\r\nb"]  # it was: one event, one line break
    assert splitter.push("c\r") == ["c"]
    assert splitter.flush() == ["\r"]  # a lone CR at the end still goes out


def test_a_held_cr_that_is_not_a_crlf_goes_with_the_next_text():
    splitter = TextEvents(compat=False)
    assert pushed(splitter, ["x\r", "\r", "y"]) == [["x"], ["\r"], ["\ry"], []]


@pytest.mark.parametrize("compat", [False, True])
def test_a_crlf_split_across_pieces_reads_back_as_one_line_break(compat):
    framer = StreamFramer(details=False, compat=compat)
    pieces = ["Hello", " world\r", "\nHi", " there\r", "\n"]
    raw = b"".join(b for text in pieces[:-1] for b in framer.frame(CHOICE, token(text)))
    raw += b"".join(framer.frame(CHOICE, done(pieces[-1])))
    line_break = " " if compat else "\n"  # compat: one space, as the fork's <div> shows it
    expected = f"Hello world{line_break}Hi there{line_break}"
    assert "".join(message_data(parse(raw.decode()))) == expected


# What JavaScript's trimStart() removes (ECMAScript WhiteSpace and LineTerminator).
JS_WHITE_SPACE = "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)


def fork_shows(raw: str) -> str:
    """The llm-viz fork's RemoteClient.streamFromServer, restated: split at blank lines,
    and of each chunk that starts with "data:" append `chunk.slice(5).trimStart()`."""
    shown = ""
    for chunk in raw.split("\n\n")[:-1]:  # the rest is still in its buffer
        if chunk.startswith("data:"):
            shown += chunk[5:].lstrip(JS_WHITE_SPACE)
    return shown


def html_collapsed(text: str) -> str:
    return re.sub(r"[ \t\n\f\r]+", " ", text).strip(" ")


@pytest.mark.parametrize(
    "pieces",
    [
        ["First", " Citizen", ":\n", "Before", " we", "\n\n", "All", ":\n", "Speak", "."],
        ["a\r\n", "\r\n", "b\r", "\n", "\u00a0c", "\u3000d", "\n\te", "\r"],
        ["\n", "x", "\n \n", "\ufeffy"],
    ],
)
def test_compat_the_fork_shows_the_text_as_its_div_renders_it(pieces):
    """Issue 24 §4: a piece with a line break was several `data:` lines, shown as `data:`."""
    framer = StreamFramer(details=False, compat=True)
    raw = b"".join(b for text in pieces[:-1] for b in framer.frame(CHOICE, token(text)))
    raw += b"".join(framer.frame(CHOICE, done(pieces[-1])))
    shown = fork_shows(raw.decode())
    assert "data:" not in shown
    text = "".join(pieces)
    assert html_collapsed(shown) == html_collapsed(text)
    assert shown.replace("\u00a0", "").strip(JS_WHITE_SPACE)  # something to see
    assert "".join(message_data(parse(raw.decode()))) == re.sub(r"\r\n|\r|\n", " ", text)


def test_standard_framing_keeps_line_breaks_as_data_lines():
    framer = StreamFramer(details=False)
    raw = b"".join(framer.frame(CHOICE, token("a\nb"))) + b"".join(framer.frame(CHOICE, done()))
    assert raw == b"data: a\ndata: b\n\n"


def test_compat_moves_leading_blanks_to_the_previous_event():
    splitter = TextEvents(compat=True)
    events = [e for batch in pushed(splitter, ["Once", " upon", "\ta", " ", "time"]) for e in batch]
    assert events == ["Once ", "upon\t", "a ", "time"]
    assert all(not e[:1].isspace() for e in events[1:])  # trimStart() loses nothing


def test_plain_frames_join_to_the_text_and_end_after_the_held_tail():
    framer = StreamFramer(details=False, echo=True)
    run = Run("m", [CHOICE], {})
    raw = b"".join(framer.opening(run))
    raw += b"".join(framer.frame(CHOICE, token(" c")))
    raw += b"".join(framer.frame(CHOICE, done(" d")))
    raw += b"".join(framer.closing(run))
    assert raw == b"data: ab\n\ndata:  c\n\ndata:  d\n\n"


def test_without_echo_the_prompt_stays_out():
    assert list(StreamFramer(details=False).opening(Run("m", [CHOICE], {}))) == []


def test_details_frames_are_token_and_done_events_with_deltas():
    framer = StreamFramer(details=True)
    raw = b"".join(framer.frame(CHOICE, token("", "\ufffd")))
    raw += b"".join(framer.frame(CHOICE, done("tail")))
    events = parse(raw.decode())
    assert [e.event for e in events] == ["token", "done"]
    first, end = (json.loads(e.data) for e in events)
    assert first == {
        "id": 7,
        "text": "\ufffd",
        "delta": "",
        "logprob": -0.5,
        "special": False,
        "top_logprobs": [],
    }
    assert end["delta"] == "tail" and end["finish_reason"] == "length"


def test_a_failure_sends_the_held_text_then_an_error_event():
    framer = StreamFramer(details=False)
    raw = b"".join(framer.frame(CHOICE, token("a\r")))
    raw += b"".join(framer.fail(GenerationFailed("boom")))
    assert parse(raw.decode()) == [
        SSEEvent("message", "a"),
        SSEEvent("message", "\n"),
        SSEEvent("error", '{"error":"boom","code":"generation_failed"}'),
    ]


def test_a_shutdown_end_sends_its_tail_in_plain_streams_only():
    plain, details = StreamFramer(details=False), StreamFramer(details=True)
    assert b"".join(plain.frame(CHOICE, done("tail", "shutdown"))) == b"data: tail\n\n"
    assert list(details.frame(CHOICE, done("tail", "shutdown"))) == []
    error = parse(b"".join(details.fail(ShuttingDown())).decode())
    assert [e.event for e in error] == ["error"]
    assert json.loads(error[0].data)["code"] == "shutting_down"
