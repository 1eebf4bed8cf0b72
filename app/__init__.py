"""llmviz-server: Hugging Face language models over HTTP for visualization frontends."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_cors import CORS

from app import api, auth, docs, errors, lifecycle, models, ops, requestlog, viz
from app.config import Settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, CORS, keys, request log, JSON errors, models, blueprints."""
    app = Flask(__name__, static_folder=None)
    settings = Settings.from_env(**(test_config or {}))
    app.config["LLMVIZ"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # No credentials: an API key travels in a header, never in a cookie.
    CORS(
        app,
        origins=list(settings.cors_origins),
        send_wildcard="*" in settings.cors_origins,
        supports_credentials=False,
        expose_headers=["X-Request-ID", "Retry-After"],
    )
    requestlog.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    models.init_app(app)
    for blueprint in (api.bp, viz.bp, ops.bp, docs.bp):
        app.register_blueprint(blueprint)
    lifecycle.start_housekeeping()
    return app
