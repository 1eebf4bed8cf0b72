"""The visualization blueprint: what models there are, their layout, and what they compute."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app import inputs, inspection, models, requestlog
from app.concurrency import run_off_hub
from app.engine import ModelTask
from app.errors import BadRequest, ModelNotFound, PayloadTooLarge
from app.models import LoadedModel
from app.schemas import InspectRequest

bp = Blueprint("viz", __name__)


@bp.get("/models")
def list_models():
    """Models in memory (device, dtype, memory, engine counters) and folders that can be loaded."""
    settings = inputs.settings()
    return jsonify(
        loaded=[lm.describe() for lm in models.cache.loaded()],
        loading=models.cache.loading(),
        available=models.list_local(settings.model_root),
        default_model=settings.default_model,
    )


@bp.delete("/models/<path:model_id>")
def unload_model(model_id: str):
    """Unload a model: it finishes the work it has accepted, then its memory is freed."""
    spec = inputs.model_spec(model_id)
    lm = models.cache.unload(spec)
    if lm is None:
        raise ModelNotFound(f"model {spec.model_id!r} is not loaded")
    stats = lm.worker.stats()
    return jsonify(
        model_id=spec.model_id, unloaded=True, finishing=stats["active"] + stats["queued"]
    )


@bp.get("/models/config")
@bp.get("/models/<path:model_id>/config")
def model_config(model_id: str | None = None):
    """A model's normalized architecture, from its config; no weights are loaded."""
    model_id = model_id or request.args.get("model_id")
    spec = inputs.model_spec(model_id)
    answer = dict(run_off_hub(models.architecture, spec))
    answer["model_id"] = spec.model_id
    if (lm := models.cache.peek(spec)) is not None:
        answer["dtype"] = str(lm.model.dtype).removeprefix("torch.")
        answer["device"] = str(lm.model.device)
    return jsonify(answer)


@bp.post("/inspect")
def inspect():
    """One forward pass: next-token candidates, logit lens, attention, residual norms."""
    body = inputs.read_body(InspectRequest)
    settings = inputs.settings()
    lm = models.cache.get(inputs.model_spec(body.model_id))
    tokens = run_off_hub(inputs.tokenize, lm, body)
    requestlog.record().update(model=lm.spec.model_id, prompt_tokens=len(tokens.ids))
    if not tokens.ids:
        raise BadRequest("the input has no tokens to inspect")
    if len(tokens.ids) > settings.max_inspect_tokens:
        raise PayloadTooLarge(
            f"the input has {len(tokens.ids)} tokens; /inspect takes at most "
            f"{settings.max_inspect_tokens} (LLMVIZ_MAX_INSPECT_TOKENS)"
        )
    selection = _selection(lm, body)
    _check_size(lm, selection, len(tokens.ids), settings.max_inspect_bytes)
    task = ModelTask(
        lambda model, tokenizer: inspection.inspect(model, tokenizer, tokens.ids, selection)
    )
    models.submit(lm, task)
    answer: dict[str, Any] = {"model_id": lm.spec.model_id, "token_ids": tokens.ids}
    if "tokens" in selection.include:
        answer["tokens"] = [
            {"id": i, "text": piece, "offset": span, "special": special}
            for i, piece, span, special in zip(
                tokens.ids, tokens.pieces, tokens.offsets, tokens.special, strict=True
            )
        ]
    answer.update(task.result())
    return Response(run_off_hub(json.dumps, answer), mimetype="application/json")


def _selection(lm: LoadedModel, body: InspectRequest) -> inspection.Selection:
    shape = lm.shape()
    heads = body.attention.heads
    return inspection.Selection(
        include=frozenset(body.include),
        top_k=body.top_k,
        layers=tuple(inputs.check_indices(body.layers, shape["n_layers"], "layer")),
        heads=None
        if heads == "all"
        else tuple(inputs.check_indices(heads, shape["n_heads"], "head")),
        attention_format=body.attention.format,
        attention_k=body.attention.k,
    )


def _check_size(lm: LoadedModel, sel: inspection.Selection, tokens: int, limit: int) -> None:
    heads = len(sel.heads) if sel.heads is not None else lm.shape()["n_heads"]
    estimate = inspection.estimate_bytes(tokens, len(sel.layers), heads, sel)
    if estimate > limit:
        raise PayloadTooLarge(
            f"this inspection would answer about {estimate / 1e6:.1f} MB, over "
            f"LLMVIZ_MAX_INSPECT_BYTES ({limit / 1e6:.1f} MB): ask for fewer layers or heads, "
            "topk attention, or a shorter input"
        )
