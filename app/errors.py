"""API errors and the handlers that turn every failure into one JSON shape."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client should see: `{"error": message, "code": code}` with `status`."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict[str, str]:
        """The JSON body of this error."""
        return {"error": self.message, "code": self.code}


class BadRequest(APIError):
    status, code = 400, "bad_request"


class ModelNotFound(APIError):
    status, code = 404, "model_not_found"


class ModelNotAllowed(APIError):
    status, code = 403, "model_not_allowed"


class ShuttingDown(APIError):
    status, code = 503, "shutting_down"

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry shortly", headers={"Retry-After": "5"})


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class Overloaded(APIError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ModelLoadFailed(APIError):
    status, code = 500, "model_load_failed"


class GenerationFailed(APIError):
    status, code = 500, "generation_failed"


def _json(payload: dict[str, str], status: int, headers: dict[str, str] | None = None):
    response = jsonify(payload)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that keep every error response JSON."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        return _json(exc.to_dict(), exc.status, exc.headers)

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
