"""GET /v1/models and GET /v1/models/{id}: the models this server can serve, OpenAI's shape."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, jsonify

from app import models
from app.engine.threads import run_off_hub
from app.errors import APIError
from app.models import ModelSpec
from app.models.remote import RemoteModel, remote_models
from app.models.resolution import DEMO_PREFIX
from app.web import parsing
from app.web.docs import documented
from app.web.v1.answers import Model, ModelList, OpenAIErrorResponse

bp = Blueprint("v1_models", __name__, url_prefix="/v1")


@bp.get("/models")
@documented(None, ModelList, errors=OpenAIErrorResponse)
def list_models():
    """The demo models, the loaded ones, local folders and exact ids in the allowlist."""
    settings = parsing.settings()
    ids = [lm.model_id for lm in models.cache.loaded()]
    ids += models.list_demo() + models.list_local(settings.model_root)
    ids += [pattern for pattern in settings.model_allowlist if not set("*?[") & set(pattern)]
    shown = []
    for model_id in dict.fromkeys(ids):
        try:
            spec = models.resolve(model_id, settings)
        except APIError:  # not allowed, or gone since it was listed
            continue
        # Under the id that was checked (a symlink's own name, not its target's), so that
        # a client asking for it is let through.
        shown.append(_describe(spec, model_id))
    shown += [_remote(far) for far in remote_models(settings).values()]
    return jsonify(ModelList(data=shown).model_dump(mode="json"))


@bp.get("/models/<path:model_id>")
@documented(None, Model, errors=OpenAIErrorResponse)
def get_model(model_id: str):
    """One model, if it exists here (or on the hub, when the hub is allowed)."""
    far = parsing.remote_model(model_id)
    if far is not None:
        return jsonify(_remote(far).model_dump(mode="json"))
    spec = parsing.model_spec(model_id)
    if models.cache.peek(spec) is None:
        run_off_hub(models.check_available, spec)  # a 404 for a model that is nowhere
    shown = "/".join(part for part in model_id.split("/") if part)  # as resolve reads it
    return jsonify(_describe(spec, shown).model_dump(mode="json"))


def _describe(spec: ModelSpec, model_id: str) -> Model:
    """`spec` as OpenAI's model object, under `model_id`: the name the client uses."""
    created = 0
    if spec.local:
        try:
            created = int((Path(spec.source) / "config.json").stat().st_mtime)
        except OSError:
            pass
    if model_id.startswith(DEMO_PREFIX) and spec.local:
        owner = "llmviz"
    elif spec.local:
        owner = "local"
    else:
        owner = model_id.split("/")[0] if "/" in model_id else "huggingface"
    return Model(id=model_id, created=created, owned_by=owner)


def _remote(far: RemoteModel) -> Model:
    """A remote model, owned by its server's host (OpenAI's `owned_by`)."""
    return Model(id=far.model_id, created=0, owned_by=f"remote:{far.spec.host}")
