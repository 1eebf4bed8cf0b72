"""gunicorn_worker's error answers have the shapes app/web/handlers.py gives the app's errors."""

from __future__ import annotations

import json

from gunicorn.http.errors import InvalidRequestLine, LimitRequestLine

from app.web.v1 import errors as openai_errors
from gunicorn_worker import error_answer, request_path


def _body(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def test_under_v1_the_body_is_the_one_app_web_v1_errors_builds():
    exc = InvalidRequestLine("GET /v1/models junk")
    path = request_path(None, exc)
    assert path == "/v1/models"
    body = _body(error_answer(400, "Bad Request", exc, path, ("*",)))
    message = body["error"]["message"]
    assert body == openai_errors.error_body(400, message, "bad_request", None)


def test_elsewhere_or_with_no_path_the_body_is_the_native_shape():
    exc = LimitRequestLine(5015, 4094)
    answer = error_answer(414, "URI Too Long", exc, None, ())
    assert answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    assert _body(answer) == {
        "code": "request_uri_too_long",
        "error": "URI Too Long: Request Line is too large (5015 > 4094)",
    }


def test_a_server_fault_says_nothing_of_its_cause():
    body = _body(error_answer(500, "Internal Server Error", RuntimeError("secret"), "/x", ()))
    assert body == {"code": "internal_error", "error": "internal server error"}
