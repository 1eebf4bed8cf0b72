"""Turning a request into what the engine needs: settings, body, model, prompt ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import BadRequest as WerkzeugBadRequest
from werkzeug.exceptions import RequestEntityTooLarge

from app import models
from app.config import Settings
from app.decoding import char_spans, token_pieces
from app.errors import BadRequest, PayloadTooLarge
from app.models import LoadedModel, ModelSpec
from app.schemas import parse_body


@dataclass(frozen=True)
class Tokens:
    """A prompt's tokens, with the text and the prompt characters behind each one."""

    prompt: str
    ids: list[int]
    pieces: list[str]
    offsets: list[list[int]]
    special: list[bool]


def settings() -> Settings:
    """This app's settings."""
    return current_app.config["LLMVIZ"]


def read_body(schema: type) -> Any:
    """The request's JSON body, validated by `schema`."""
    try:
        # force: browsers may send JSON as text/plain to avoid a CORS preflight.
        payload = request.get_json(force=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is larger than {settings().max_body_bytes} bytes (LLMVIZ_MAX_BODY_BYTES)"
        ) from None
    except WerkzeugBadRequest:
        raise BadRequest("request body is not valid JSON") from None
    return parse_body(schema, payload)


def model_spec(model_id: str | None) -> ModelSpec:
    """Where the requested (or default) model lives."""
    config = settings()
    return models.resolve(model_id or config.default_model, config)


def render(lm: LoadedModel, body: Any) -> tuple[str, bool | None]:
    """The prompt text, and whether to add special tokens (None: the tokenizer's default)."""
    if body.messages is None:
        return body.prompt, getattr(body, "add_special_tokens", None)
    if not lm.tokenizer.chat_template:
        raise BadRequest(
            f"model {lm.spec.model_id!r} has no chat template: send `prompt` instead of `messages`"
        )
    chat = [message.model_dump() for message in body.messages]
    try:
        text = lm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises for conversations the template refuses
        raise BadRequest(f"the chat template refused these messages: {exc}") from None
    # A rendered template already holds its special tokens (BOS and the like).
    return text, False


def encode(lm: LoadedModel, body: Any) -> tuple[str, list[int]]:
    """The prompt text and its ids for generation; an empty prompt starts from BOS."""
    prompt, add_special = render(lm, body)
    ids = lm.tokenizer(prompt, add_special_tokens=add_special is not False)["input_ids"]
    if ids:
        return prompt, ids
    if lm.tokenizer.bos_token_id is None:
        raise BadRequest("the prompt is empty and this model has no beginning-of-sequence token")
    return prompt, [lm.tokenizer.bos_token_id]


def tokenize(lm: LoadedModel, body: Any) -> Tokens:
    """Tokenize `prompt` or `messages`, or describe given `token_ids`, for display."""
    tokenizer = lm.tokenizer
    if getattr(body, "token_ids", None) is not None:
        ids = check_token_ids(lm, body.token_ids)
        pieces = token_pieces(tokenizer, ids)
        return _tokens("".join(pieces), ids, pieces, tokenizer, None)
    prompt, add_special = render(lm, body)
    options = {} if add_special is None else {"add_special_tokens": add_special}
    encoding = tokenizer(prompt, return_offsets_mapping=tokenizer.is_fast, **options)
    ids = encoding["input_ids"]
    offsets = encoding.get("offset_mapping")
    return _tokens(prompt, ids, token_pieces(tokenizer, ids), tokenizer, offsets)


def check_token_ids(lm: LoadedModel, ids: Sequence[int]) -> list[int]:
    """The ids, if every one is in the model's vocabulary; a 400 otherwise."""
    vocab = len(lm.tokenizer)
    if bad := [i for i in ids if not 0 <= i < vocab]:
        raise BadRequest(f"token id {bad[0]} is outside this model's vocabulary (0 to {vocab - 1})")
    return list(ids)


def check_indices(indices: list[int] | None, count: int, what: str) -> list[int]:
    """Selected layer or head indices (all when None), each checked against `count`."""
    if indices is None:
        return list(range(count))
    if bad := [i for i in indices if i >= count]:
        raise BadRequest(f"{what} {bad[0]} does not exist: this model has {count} {what}s")
    return list(dict.fromkeys(indices))


def _tokens(prompt: str, ids, pieces, tokenizer: Any, offsets) -> Tokens:
    special_ids = set(tokenizer.all_special_ids)
    special = [token_id in special_ids for token_id in ids]
    return Tokens(prompt, ids, pieces, char_spans(prompt, pieces, special, offsets), special)
