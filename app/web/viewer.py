"""The built-in viewer: `GET /` serves a single page that shows a model working, live.

Its files (HTML, CSS, JavaScript ES modules) live in `static/` and are served as they are,
so there is no build step. They hold no data, so they need no API key: the page asks for one
when the API answers 401. `/viewer/client.js` is also the API and SSE client that other
frontends can import.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

bp = Blueprint("viewer", __name__)
STATIC = Path(__file__).parent / "static"


@bp.get("/")
def page():
    """The viewer page."""
    return send_from_directory(STATIC, "index.html")


@bp.get("/viewer/<path:filename>")
def asset(filename: str):
    """The viewer's static files, client.js among them."""
    return send_from_directory(STATIC, filename)
