"""The models blueprint: which models there are (GET /models) and unloading one (DELETE)."""

from __future__ import annotations

from flask import Blueprint

from app import models
from app.errors import ModelNotFound
from app.models.remote import remote_models
from app.ops import placement
from app.web import parsing
from app.web.answers import (
    LoadedModelInfo,
    LoadingProgress,
    ModelsResponse,
    RemoteModelInfo,
    ServedBy,
    UnloadResponse,
)
from app.web.docs import documented
from app.web.shaping import reply

bp = Blueprint("models", __name__)


@bp.get("/models")
@documented(None, ModelsResponse)
def list_models():
    """Models in memory and loadable, and the process (Ray node, replica) that answered."""
    settings = parsing.settings()
    return reply(
        ModelsResponse(
            loaded=[LoadedModelInfo.model_validate(lm.describe()) for lm in models.cache.loaded()],
            loading=models.cache.loading(),
            loading_progress=[LoadingProgress.model_validate(p) for p in models.progress.running()],
            available=[
                model_id
                for model_id in models.list_demo() + models.list_local(settings.model_root)
                if models.allowed(model_id, settings)  # as a request for it is checked
            ],
            remote=[
                RemoteModelInfo.model_validate(far.describe())
                for far in remote_models(settings).values()
            ],
            default_model=settings.default_model,
            served_by=ServedBy.model_validate(placement.served_by()),
        )
    )


@bp.delete("/models/<path:model_id>")
@documented(None, UnloadResponse)
def unload_model(model_id: str):
    """Unload a model: it finishes the work it has accepted, then its memory is freed."""
    spec = parsing.model_spec(model_id)
    lm = models.cache.unload(spec)
    if lm is None:
        raise ModelNotFound(f"model {model_id!r} is not loaded")  # as the client named it
    stats = lm.stats()
    return reply(
        UnloadResponse(
            model_id=spec.model_id, unloaded=True, finishing=stats["active"] + stats["queued"]
        )
    )
