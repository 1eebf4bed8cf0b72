"""llmviz-server: Hugging Face language models over HTTP for visualization frontends."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_cors import CORS

from app import api, errors, models, viz
from app.config import Settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, CORS, JSON errors, the model cache and the API."""
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
    )
    errors.init_app(app)
    models.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(viz.bp)
    return app
