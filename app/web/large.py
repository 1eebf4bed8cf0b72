"""Answers whose size the client sets, built and serialized without stalling the server.

A 900 KB prompt's /tokenize answer is 30 MB of JSON. Built on the gevent hub, it held
every other request, /health included, for over a second (vLLM #24910 is the same
fault). Moving the work to a native thread is not enough by itself: one call into a C
extension (pydantic validating the answer, `json.dumps` encoding it) holds the GIL from
start to end, 0.3-0.9 s each for that answer. So the answer is built from plain values
and encoded a slice of at most `SLICE` list items per call: between calls the thread
gives the GIL up, and the hub serves on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, jsonify

from app.engine.threads import run_off_hub

SLICE = 4096  # list items per encoder call: about a millisecond of GIL each


def reply_off_hub(build: Callable[[], dict[str, Any]]) -> Response:
    """A JSON response of `build()`'s plain values (dicts, lists, tuples, str, numbers,
    bool, None), built and encoded on a native thread, byte for byte as `jsonify` writes
    it outside debug mode: keys sorted, no spaces, non-ASCII escaped, a final newline."""
    if current_app.debug:  # `jsonify` indents there: keep its bytes rather than the hub
        return jsonify(build())

    def serialize() -> str:
        return "".join(encode(build()))

    return current_app.response_class(f"{run_off_hub(serialize)}\n", mimetype="application/json")


def encode(value: Any) -> Iterator[str]:
    """`json.dumps(value, sort_keys=True, separators=(",", ":"))` in pieces, no encoder
    call covering more than `SLICE` items of a list (or one short list's items each)."""
    if isinstance(value, dict):
        yield "{"
        for i, key in enumerate(sorted(value)):
            yield f"{',' if i else ''}{_dumps(str(key))}:"
            yield from encode(value[key])
        yield "}"
    elif isinstance(value, list | tuple) and len(value) > SLICE:
        yield "["
        for start in range(0, len(value), SLICE):
            yield ("," if start else "") + _dumps(value[start : start + SLICE])[1:-1]
        yield "]"
    elif isinstance(value, list | tuple) and any(isinstance(v, dict | list | tuple) for v in value):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from encode(item)
        yield "]"
    else:
        yield _dumps(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
