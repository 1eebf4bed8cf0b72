"""The error handlers that keep every response JSON: `{"error": message, "code": code}`."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from app.engine import QueueFull, TaskAbandoned
from app.errors import APIError, translate

log = logging.getLogger(__name__)


def _json(payload: dict[str, str], status: int, headers: dict[str, str] | None = None):
    response = jsonify(payload)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that keep every error response JSON."""

    @app.errorhandler(APIError)
    @app.errorhandler(QueueFull)
    @app.errorhandler(TaskAbandoned)
    def _api_error(exc: Exception):
        error = translate(exc)
        return _json(error.to_dict(), error.status, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = dict(exc.get_headers())
        headers.pop("Content-Type", None)
        return _json({"error": exc.description or exc.name, "code": code}, exc.code or 500, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _json({"error": "internal server error", "code": "internal_error"}, 500)
