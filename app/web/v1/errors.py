"""Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}`.

The status is the native API's (OpenAI's SDKs pick their exception class by it);
`code` is the native API's code, so both APIs name a failure alike; `type` is
the OpenAI family the status belongs to.
"""

from __future__ import annotations

from typing import Any

PREFIX = "/v1"

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def applies(path: str) -> bool:
    """Whether a request path belongs to the OpenAI-compatible API."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict:
    """The JSON body of an error, as OpenAI's API and SDKs have it."""
    error: dict[str, Any] = {
        "message": message,
        "type": error_type(status),
        "param": param,
        "code": code,
    }
    return {"error": error}
