"""llmviz-server: Hugging Face language models over HTTP for visualization frontends.

Packages, from the edge inwards (imports only go this way; see .importlinter):
`web` (Flask) → `ops` (metrics, lifecycle) → `models` (the registry) and
`analysis` (architecture, inspection) → `engine` (native-thread model work).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_cors import CORS

from app import models, ops, web
from app.config import Settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, CORS, JSON errors, the model cache, housekeeping, web."""
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
    models.cache.configure(settings)
    ops.init_app(app)
    web.init_app(app)
    return app
