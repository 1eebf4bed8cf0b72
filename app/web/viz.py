"""The visualization blueprint: a model's layout (its config) and what it computes (/inspect)."""

from __future__ import annotations

import functools
import json
from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel

from app import analysis, models
from app.engine.threads import run_off_hub
from app.errors import BadRequest, PayloadTooLarge
from app.models import LoadedModel, ModelSpec, prompts
from app.web import interventions, parsing, requestlog
from app.web.answers import ArchitectureResponse, FrontendConfigResponse, InspectResponse
from app.web.bodies import ConfigRequest, InspectRequest
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.large import DUMPS, reply_off_hub

bp = Blueprint("viz", __name__)


@bp.get("/models/config")
@bp.get("/models/<path:model_id>/config")
@documented(None, ArchitectureResponse, query=("model_id",))
def model_config(model_id: str | None = None):
    """A model's normalized architecture, from its config; no weights are loaded."""
    model_id = model_id or request.args.get("model_id")
    spec = parsing.model_spec(model_id)
    answer = {**run_off_hub(_architecture, spec), "model_id": spec.model_id}
    if (lm := models.cache.peek(spec)) is not None:
        answer.update(lm.placement())
    return _reply_off_hub(ArchitectureResponse, answer)


@bp.post("/config")
@documented(ConfigRequest, FrontendConfigResponse)
def frontend_config():
    """The model's config.json keys plus our description: the llm-viz fork's "Load Config"."""
    body = parsing.read_body(ConfigRequest)
    spec = parsing.model_spec(body.model_id)
    architecture = dict(run_off_hub(_architecture, spec))
    raw = architecture.pop("raw_config")
    # The keys its PromptBar reads, from the text model: a GPT-2 config.json says
    # n_positions, not max_position_embeddings, and a multimodal one nests them.
    readable = {
        "hidden_size": architecture["d_model"],
        "num_attention_heads": architecture["n_heads"],
        "num_hidden_layers": architecture["n_layers"],
        "vocab_size": architecture["vocab_size"],
        "max_position_embeddings": architecture["context_length"],
    }
    answer = {**raw, **readable, "model_id": spec.model_id, "llmviz": architecture}
    return _reply_off_hub(FrontendConfigResponse, answer)


@bp.post("/inspect")
@documented(InspectRequest, InspectResponse)
def inspect():
    """One forward pass: next-token candidates, logit lens, attention, residual norms."""
    body = parsing.read_body(InspectRequest)
    settings = parsing.settings()
    lm = models.cache.get(parsing.model_spec(body.model_id))
    given = parsing.prompt_input(body)
    # Count first (ids only): pieces and offsets of a huge input are work to refuse early.
    count = run_off_hub(prompts.count_tokens, lm, given)
    requestlog.record().update(model=lm.model_id, prompt_tokens=count)
    if not count:
        raise BadRequest("the input has no tokens to inspect")
    if count > settings.max_inspect_tokens:
        raise PayloadTooLarge(
            f"the input has {count} tokens; /inspect takes at most "
            f"{settings.max_inspect_tokens} (LLMVIZ_MAX_INSPECT_TOKENS)"
        )
    lm.check_context(count)
    tokens = run_off_hub(prompts.tokenize, lm, given)
    selection = _selection(lm, body)
    _check_size(lm, selection, len(tokens.ids), settings.max_inspect_bytes)
    intervened = interventions.resolve(lm.profile, body.interventions, len(tokens.ids))
    task = analysis.inspection_task(tokens.ids, selection, intervened)
    models.submit(lm, task)
    parts = task.result(disconnect_probe(request.environ))

    def build() -> dict[str, Any]:
        # InspectResponse's fields as plain values, in its order: validating and dumping
        # megabytes of our own tensors would hold the GIL (see app/web/large.py).
        answer = {"model_id": lm.model_id, "token_ids": tokens.ids, **parts}
        if "tokens" in selection.include:
            answer["tokens"] = [
                {"id": i, "text": piece, "offset": list(span), "special": special}
                for i, piece, span, special in zip(
                    tokens.ids, tokens.pieces, tokens.offsets, tokens.special, strict=True
                )
            ]
        return {name: answer[name] for name in InspectResponse.model_fields if name in answer}

    # `json.dumps`'s spelling, as /inspect has always answered.
    return reply_off_hub(build, DUMPS)


@functools.lru_cache(maxsize=64)
def _architecture(spec: ModelSpec) -> dict[str, Any]:
    # Building the weightless meta-device model takes a while for big configs: keep the answer.
    return analysis.describe(*models.read_config(spec))


def _selection(lm: LoadedModel, body: InspectRequest) -> analysis.Selection:
    return analysis.Selection(
        include=frozenset(body.include),
        scope=parsing.head_selection(lm.profile, body.layers, body.attention.heads),
        top_k=body.top_k,
        attention_format=body.attention.format,
        attention_k=body.attention.k,
    )


def _check_size(lm: LoadedModel, sel: analysis.Selection, tokens: int, limit: int) -> None:
    estimate = analysis.estimate_bytes(tokens, lm.shape()["n_heads"], sel)
    if estimate > limit:
        raise PayloadTooLarge(
            f"this inspection would answer about {estimate / 1e6:.1f} MB, over "
            f"LLMVIZ_MAX_INSPECT_BYTES ({limit / 1e6:.1f} MB): ask for fewer layers or heads, "
            "topk attention, or a shorter input"
        )


def _reply_off_hub(schema: type[BaseModel], answer: dict[str, Any]) -> Response:
    # Answers run to megabytes: validate and serialize them off the gevent hub.
    def shape() -> str:
        return json.dumps(schema.model_validate(answer).model_dump(mode="json", exclude_unset=True))

    return Response(run_off_hub(shape), mimetype="application/json")
