"""The tokens blueprint: POST /tokenize and POST /detokenize."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from app import models
from app.engine.threads import run_off_hub
from app.errors import NotAvailableRemotely
from app.models import prompts
from app.models.remote import RemoteModel
from app.web import parsing, remote, requestlog
from app.web.answers import DetokenizeResponse, TokenizeResponse
from app.web.bodies import DetokenizeRequest, TokenizeRequest
from app.web.docs import documented
from app.web.large import reply_off_hub

bp = Blueprint("tokens", __name__)


@bp.post("/tokenize")
@documented(TokenizeRequest, TokenizeResponse)
def tokenize():
    """Split a prompt into token ids, the text each token adds, and where it sits."""
    body = parsing.read_body(TokenizeRequest)
    far = parsing.remote_model(body.model_id)
    if far is not None and far.spec.tokenizer is None:
        return _remote_ids(far, body)
    lm: prompts.Tokenized = (
        remote.local_tokens(far, "/tokenize")
        if far is not None
        else models.cache.get(parsing.model_spec(body.model_id))
    )
    tokens = run_off_hub(prompts.tokenize, lm, parsing.prompt_input(body))
    requestlog.record().update(model=lm.model_id, prompt_tokens=len(tokens.ids))
    # TokenizeResponse's fields as plain values: validating megabytes of our own lists
    # would hold the GIL for most of a second (see app/web/large.py).
    return reply_off_hub(
        lambda: {
            "token_ids": tokens.ids,
            "tokens": tokens.pieces,
            "count": len(tokens.ids),
            "offsets": tokens.offsets,
            "special": tokens.special,
            "prompt": tokens.prompt if body.messages is not None else None,
            "bos_token_id": lm.tokenizer.bos_token_id,
        }
    )


@bp.post("/detokenize")
@documented(DetokenizeRequest, DetokenizeResponse)
def detokenize():
    """Turn token ids back into text."""
    body = parsing.read_body(DetokenizeRequest)
    far = parsing.remote_model(body.model_id)
    lm: prompts.Tokenized = (
        remote.local_tokens(far, "/detokenize")
        if far is not None
        else models.cache.get(parsing.model_spec(body.model_id))
    )
    requestlog.record()["model"] = lm.model_id
    # As many ids as the body holds: decoded off the hub.
    return reply_off_hub(
        lambda: {"text": prompts.detokenize(lm, body.token_ids, body.skip_special_tokens)}
    )


def _remote_ids(far: RemoteModel, body: TokenizeRequest) -> dict[str, Any]:
    """/tokenize of a remote model without a local tokenizer: the ids its own tokenize
    endpoint gives (no texts, spans or special flags: those need the tokenizer here)."""
    if body.prompt is None:
        raise NotAvailableRemotely(
            f"/tokenize of `messages` needs the tokenizer of remote model {far.model_id!r}: "
            "give it a local `tokenizer` in LLMVIZ_REMOTE_MODELS"
        )
    ids = far.remote_token_ids(body.prompt)
    requestlog.record().update(model=far.model_id, prompt_tokens=len(ids))
    return {
        "token_ids": ids,
        "tokens": None,
        "count": len(ids),
        "offsets": None,
        "special": None,
        "prompt": None,
        "bos_token_id": None,
    }
