"""The error handlers that keep every response JSON: `{"error": message, "code": code}`,
or under /v1 the OpenAI API's `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from app.engine import QueueFull, TaskAbandoned
from app.errors import APIError, translate
from app.web.v1 import errors as openai_errors

log = logging.getLogger(__name__)


def _json(
    message: str,
    code: str,
    status: int,
    headers: dict[str, str] | None = None,
    param: str | None = None,
):
    if openai_errors.applies(request.path):
        payload = openai_errors.error_body(status, message, code, param)
    else:
        payload = {"error": message, "code": code}
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
        assert error is not None  # registered for exactly the kinds `translate` knows
        return _json(error.message, error.code, error.status, error.headers, error.param)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = dict(exc.get_headers())
        headers.pop("Content-Type", None)
        return _json(exc.description or exc.name, code, exc.code or 500, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _json("internal server error", "internal_error", 500)
