"""Reading a request: this app's settings, the validated JSON body, the model it names,
and the layer/head selections it asks for."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from flask import current_app, request
from gunicorn.http.errors import ParseException
from pydantic import BaseModel
from werkzeug.exceptions import RequestEntityTooLarge

from app import models
from app.config import Settings
from app.engine import HeadSelection
from app.engine.threads import run_off_hub
from app.errors import BadRequest, NotAvailableRemotely, PayloadTooLarge
from app.models import ModelProfile, ModelSpec, PromptInput, remote
from app.models.remote import RemoteModel
from app.web.bodies import parse_body

B = TypeVar("B", bound=BaseModel)
OFF_HUB_BODY_BYTES = 64 * 1024  # smaller bodies are read at once: a thread hop costs more


def settings() -> Settings:
    """This app's settings."""
    return current_app.config["LLMVIZ"]


def read_body(schema: type[B]) -> B:
    """The request's JSON body, validated by `schema` (a pydantic model); a 400 or 413 if not.

    The body is read as JSON whatever its Content-Type: browsers may send JSON as
    text/plain to avoid a CORS preflight.
    """
    raw = _raw_body()
    if len(raw) < OFF_HUB_BODY_BYTES:
        return parse_body(schema, _decode_json(raw))
    # Decoding, the surrogate scan and validation take tens of milliseconds for a 1 MB
    # body of small items (0.1 s on the hub for 260,000 ids): done on a native thread.
    return run_off_hub(lambda: parse_body(schema, _decode_json(raw)))


def _raw_body() -> bytes:
    limit = settings().max_body_bytes
    declared = request.content_length
    # A body with a Content-Length is read to that length and no further. A chunked one is
    # read up to one byte past the limit, from the server's own stream when it ends it
    # (gunicorn): werkzeug's limited stream refuses any read at the limit, so a body of
    # exactly the limit would look too large (and disagree with a proxy's equal limit).
    wanted = limit + 1 if declared is None else declared
    terminated = declared is None and request.environ.get("wsgi.input_terminated")
    chunks, size = [], 0
    try:
        stream = request.environ["wsgi.input"] if terminated else request.stream
        while size < min(wanted, limit + 1) and (chunk := stream.read(wanted - size)):
            chunks.append(chunk)
            size += len(chunk)
    except RequestEntityTooLarge:  # werkzeug's own check of the length or the stream
        size = limit + 1
    except ParseException:  # gunicorn: a chunk size that is no number, a missing CRLF, ...
        raise BadRequest("request body is not valid chunked transfer coding") from None
    if size > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes (LLMVIZ_MAX_BODY_BYTES)")
    return b"".join(chunks)


def _decode_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be a request") from None
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at character {exc.pos}"
        ) from None
    except ValueError:  # an integer of more than 4300 digits (Python's conversion limit)
        raise BadRequest("request body holds a number too long to be a request value") from None


def model_spec(model_id: str | None) -> ModelSpec:
    """Where the requested (or default) model lives."""
    config = settings()
    far = remote.remote_model(model_id or config.default_model, config)
    if far is not None:
        raise NotAvailableRemotely(
            f"model {far.model_id!r} is served by a remote server ({far.spec.host}), "
            "which returns tokens and logprobs only: this needs the model itself "
            "(/generate, /generate/stream and /tokenize work on it)"
        )
    return models.resolve(model_id or config.default_model, config)


def remote_model(model_id: str | None) -> RemoteModel | None:
    """The remote model (LLMVIZ_REMOTE_MODELS) the request names, or None for any other."""
    config = settings()
    return remote.remote_model(model_id or config.default_model, config)


def prompt_input(body: Any) -> PromptInput:
    """The prompt part of a request body (prompt, messages, token_ids, add_special_tokens)."""
    messages = getattr(body, "messages", None)
    return PromptInput(
        prompt=getattr(body, "prompt", None),
        messages=None if messages is None else [m.model_dump() for m in messages],
        token_ids=getattr(body, "token_ids", None),
        add_special_tokens=getattr(body, "add_special_tokens", None),
    )


def head_selection(
    profile: ModelProfile, layers: list[int] | None, heads: Literal["all"] | list[int]
) -> HeadSelection:
    """The layers (all when None) and heads (all for "all") asked for, checked against the model."""
    shape = profile.shape()
    chosen_heads = None if heads == "all" else _indices(heads, shape["n_heads"], "head")
    return HeadSelection(_indices(layers, shape["n_layers"], "layer"), chosen_heads)


def _indices(indices: list[int] | None, count: int, what: str) -> tuple[int, ...]:
    if indices is None:
        return tuple(range(count))
    if bad := [i for i in indices if i >= count]:
        raise BadRequest(f"{what} {bad[0]} does not exist: this model has {count} {what}s")
    return tuple(dict.fromkeys(indices))
