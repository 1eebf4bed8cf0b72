"""llmviz-server: Hugging Face language models over HTTP for visualization frontends.

Packages, from the edge inwards (imports only go this way; see .importlinter):
`web` (Flask) → `ops` (metrics, lifecycle) → `models` (the registry) and
`analysis` (architecture, inspection) → `engine` (native-thread model work).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
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
    wildcard = "*" in settings.cors_origins
    CORS(
        app,
        origins=list(settings.cors_origins),
        send_wildcard=wildcard,
        supports_credentials=False,
        expose_headers=["X-Request-ID", "Retry-After"],
        # flask-cors says `Vary: Origin` only when it sends a matched origin back, and only
        # with several origins: not on the answer to a disallowed Origin, nor with one
        # origin, so a shared cache could give that answer to an allowed origin
        # (expressjs/cors #106). `_vary_on_origin` says it on every answer instead.
        vary_header=False,
    )
    if not wildcard:
        _vary_on_origin(app)
    models.cache.configure(settings)
    ops.init_app(app)
    web.init_app(app)
    return app


def _vary_on_origin(app: Flask) -> None:
    """Mark every answer `Vary: Origin`: with origins other than `*` its CORS headers
    depend on the request's Origin (present, absent, allowed or not), and that holds for
    error answers, streams and preflights as much as for the rest."""

    @app.after_request
    def _vary(response: Response) -> Response:
        response.vary.add("Origin")
        return response
