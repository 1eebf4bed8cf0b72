"""The HTTP layer, Flask only.

Blueprints: `generation` (/generate, /generate/stream), `tokens` (/tokenize,
/detokenize), `admin` (/models, DELETE /models/<id>), `viz` (/models/<id>/config,
/config, /inspect), `ops` (/health, /metrics), `docs` (/openapi.json, /docs) and
`viewer` (the page at / and its static files); `v1` holds the OpenAI-compatible API.
Around them: `bodies` and `parsing` read requests; `serving` runs a generation request's
jobs through one loop for both APIs; `answers`, `shaping` and `streams` (the native SSE
framer) write responses; `sse` frames events; `disconnect` notices a client that left;
`auth` checks keys; `requestlog` logs; `handlers` turns every error into JSON.
"""

from __future__ import annotations

from flask import Flask

from app.web import admin, auth, docs, generation, handlers, ops, requestlog, tokens, viewer, viz
from app.web.v1 import catalog, completions

BLUEPRINTS = (
    generation.bp,
    tokens.bp,
    admin.bp,
    viz.bp,
    ops.bp,
    docs.bp,
    viewer.bp,
    catalog.bp,
    completions.bp,
)


def init_app(app: Flask) -> None:
    """Install JSON error handlers, the request log and key checks; register every blueprint."""
    handlers.init_app(app)
    requestlog.init_app(app)
    auth.init_app(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
