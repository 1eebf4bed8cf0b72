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
    """`style.dumps(value)` (and its newline) as ASCII bytes, in the pieces it was made in
    (one `str.encode` or `bytes.join` of the whole answer would hold the GIL throughout)."""
    pieces = [piece.encode("ascii") for piece in encode(value, style)]
    if style.newline:
        pieces.append(b"\n")
    return pieces


def encode(value: Any, style: Style = JSONIFY) -> Iterator[str]:
    """`style.dumps(value)` in pieces, no encoder call covering more than `SLICE` items of
    a list or entries of a dict (or one short container's items each), or more than
    `TEXT_SLICE` characters of a string."""
    item_sep, key_sep = style.separators
    if isinstance(value, TextPieces):  # one string, written a piece at a time
        yield '"'
        for piece in value:
            yield from _escaped(piece, style)
        yield '"'
    elif isinstance(value, dict):
        keys = sorted(value) if style.sort_keys else list(value)
        if len(keys) > SLICE and not any(_is_container(value[key]) for key in keys):
            # Many flat entries (/inspect's token_text): whole slices of entries per call.
            yield "{"
            for start in range(0, len(keys), SLICE):
                part = {key: value[key] for key in keys[start : start + SLICE]}
                yield (item_sep if start else "") + style.dumps(part)[1:-1]
            yield "}"
            return
        yield "{"
        for i, key in enumerate(keys):
            yield f"{item_sep if i else ''}{style.dumps(str(key))}{key_sep}"
            yield from encode(value[key], style)
        yield "}"
    elif isinstance(value, list | tuple) and len(value) > SLICE:
        yield "["
        for start in range(0, len(value), SLICE):
            yield (item_sep if start else "") + style.dumps(value[start : start + SLICE])[1:-1]
        yield "]"
    elif isinstance(value, list | tuple) and any(_is_container(v) for v in value):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield item_sep
            yield from encode(item, style)
        yield "]"
    elif isinstance(value, str) and len(value) > TEXT_SLICE:
        yield '"'
        yield from _escaped(value, style)
        yield '"'
    else:
        yield style.dumps(value)


def _escaped(text: str, style: Style) -> Iterator[str]:
    """`text` as a JSON string's inside (escaped, no quotes), `TEXT_SLICE` characters per
    call. Escaping goes character by character, and a Python str holds whole code points
    (a slice never splits a surrogate pair), so the slices' escapes join into the whole's."""
    for start in range(0, len(text), TEXT_SLICE):
        yield style.dumps(text[start : start + TEXT_SLICE])[1:-1]


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list | tuple)
