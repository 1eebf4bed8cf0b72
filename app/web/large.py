"""Answers whose size the client sets, built and serialized without stalling the server.

A 900 KB prompt's /tokenize answer is 30 MB of JSON, and an /inspect answer can be as
large (LLMVIZ_MAX_INSPECT_BYTES). Built on the gevent hub, such an answer held every
other request, /health included, for over a second (vLLM #24910 is the same fault).
Moving the work to a native thread is not enough by itself: one call into a C extension
(pydantic validating the answer, `json.dumps` encoding it, `str.encode` turning it into
bytes) holds the GIL from start to end, 0.3-0.9 s each for such an answer. So the answer
is built from plain values and encoded a slice at a time: at most `SLICE` list items or
dict entries, or `TEXT_SLICE` characters of one string, per encoder call. Between calls
the thread gives the GIL up, and the hub serves on. The bytes are those `json.dumps`
writes in the same `Style`: slicing changes when the work is done, not its result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, jsonify

from app.engine.tensors import TextPieces
from app.engine.threads import run_off_hub

SLICE = 4096  # list items or dict entries per encoder call: about a millisecond of GIL each
TEXT_SLICE = 1 << 20  # characters of one string per encoder call: about 3 ms of GIL
BLOCK = 1 << 20  # bytes of the body per block the server writes


@dataclass(frozen=True)
class Style:
    """How an answer's JSON is spelled: key order and separators, as `json.dumps` takes them.

    Non-ASCII characters are always escaped (`ensure_ascii`), so the text is ASCII.
    """

    sort_keys: bool
    separators: tuple[str, str]  # between items, between a key and its value
    newline: bool  # a final newline after the value

    def dumps(self, value: Any) -> str:
        """`json.dumps` of `value` in this style (no final newline)."""
        return json.dumps(value, sort_keys=self.sort_keys, separators=self.separators)


JSONIFY = Style(sort_keys=True, separators=(",", ":"), newline=True)  # Flask's, outside debug
DUMPS = Style(sort_keys=False, separators=(", ", ": "), newline=False)  # `json.dumps` defaults


def reply_off_hub(build: Callable[[], dict[str, Any]], style: Style = JSONIFY) -> Response:
    """A JSON response of `build()`'s plain values (dicts, lists, tuples, str, numbers,
    bool, None), built and encoded on a native thread, byte for byte as `style` writes
    it (by default as `jsonify` does outside debug mode: keys sorted, no spaces,
    non-ASCII escaped, a final newline)."""
    if style == JSONIFY and current_app.debug:  # `jsonify` indents there: keep its bytes
        return jsonify(build())

    def serialize() -> list[bytes]:
        return render(build(), style)

    # The pieces are the body as they are (werkzeug sums their lengths for Content-Length):
    # joining them would copy the whole answer in one call that holds the GIL.
    return current_app.response_class(run_off_hub(serialize), mimetype="application/json")


def render(value: Any, style: Style = JSONIFY) -> list[bytes]:
    """`style.dumps(value)` (and its newline) as ASCII bytes, in blocks of about `BLOCK`
    bytes: one `str.encode` or `bytes.join` of the whole answer would hold the GIL
    throughout, and each block is one write on the hub (a million small pieces took
    the hub 35 s to send)."""
    blocks: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for piece in encode(value, style):
        pending.append(piece.encode("ascii"))
        size += len(pending[-1])
        if size >= BLOCK:
            blocks.append(b"".join(pending))
            pending, size = [], 0
    if style.newline:
        pending.append(b"\n")
    if pending:
        blocks.append(b"".join(pending))
    return blocks


def encode(value: Any, style: Style = JSONIFY) -> Iterator[str]:
    """`style.dumps(value)` in pieces, no encoder call covering more than `SLICE` items
    all told (list items, dict entries, and a string's length counted in `TEXT_SLICE /
    SLICE` characters), nor more than `TEXT_SLICE` characters of one string."""
    if isinstance(value, TextPieces):  # one string, written a piece at a time
        yield '"'
        for piece in value:
            yield from _escaped(piece, style)
        yield '"'
    elif isinstance(value, str) and len(value) > TEXT_SLICE:
        yield '"'
        yield from _escaped(value, style)
        yield '"'
    elif _weight(value) <= SLICE:
        yield style.dumps(value)
    elif isinstance(value, dict):
        keys = sorted(value) if style.sort_keys else list(value)
        yield "{"
        yield from _grouped(keys, value, style)
        yield "}"
    else:  # a list or tuple
        yield "["
        yield from _grouped(range(len(value)), value, style)
        yield "]"


def _grouped(keys: Any, container: Any, style: Style) -> Iterator[str]:
    """A container's inside: runs of light items one encoder call each, a heavy item in
    pieces of its own. `keys` are a dict's keys in order, or a list's indices."""
    item_sep, key_sep = style.separators
    is_dict = isinstance(container, dict)
    group: list[Any] = []
    weight = 0
    started = False

    def flush() -> Iterator[str]:
        nonlocal group, weight, started
        if group:
            whole = style.dumps(dict(group) if is_dict else group)
            yield (item_sep if started else "") + whole[1:-1]
            group, weight, started = [], 0, True

    for key in keys:
        item = container[key]
        heft = _weight(item)
        if heft > SLICE:
            yield from flush()
            head = f"{style.dumps(str(key))}{key_sep}" if is_dict else ""
            yield (item_sep if started else "") + head
            yield from encode(item, style)
            started = True
            continue
        if weight + heft > SLICE:
            yield from flush()
        group.append((key, item) if is_dict else item)
        weight += heft
    yield from flush()


def _weight(value: Any) -> int:
    """How much encoding `value` takes, in list items, up to just past `SLICE` (then it
    stops counting); `TextPieces` always count as past it (they are written piece by piece)."""
    weight = 0
    stack = [value]
    while stack and weight <= SLICE:
        item = stack.pop()
        weight += 1
        if isinstance(item, TextPieces):
            return SLICE + 1
        if isinstance(item, str):
            weight += len(item) * SLICE // TEXT_SLICE
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return weight


def _escaped(text: str, style: Style) -> Iterator[str]:
    """`text` as a JSON string's inside (escaped, no quotes), `TEXT_SLICE` characters per
    call. Escaping goes character by character, and a Python str holds whole code points
    (a slice never splits a surrogate pair), so the slices' escapes join into the whole's."""
    for start in range(0, len(text), TEXT_SLICE):
        yield style.dumps(text[start : start + TEXT_SLICE])[1:-1]
