"""gunicorn's gevent worker, with the errors gunicorn answers itself in the API's JSON shape.

gunicorn reads each request's head before the app sees it, and answers one it cannot take
with an HTML page of its own (gunicorn.util.write_error): a request line over
`limit_request_line` (414), too many or too large headers (431), a malformed request line,
method, HTTP version or header (400), an unsupported transfer coding (501), and so on, and
500 for an app failure that escaped before any answer began. Clients of this API (the
viewer, the openai SDK) read errors as JSON; `JSONErrorWorker` answers those with the
app's `{"error": message, "code": code}`, or under /v1 OpenAI's
`{"error": {"message", "type", "param", "code"}}`, as app/web/handlers.py does.

This module sits outside the `app` package on purpose: gunicorn's master process imports
the worker class, and importing anything under `app` would import the whole app (torch,
transformers) into the master, before the worker's gevent monkey-patching.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.http import HTTP_STATUS_CODES

# How much of the client's own text (a malformed request line or header) an error repeats.
_DETAIL_CHARS = 200
# What app/web/v1/errors.py calls the OpenAI-compatible API (its PREFIX and `applies`).
_OPENAI_PREFIX = "/v1"
# OpenAI's error `type` by status, as app/web/v1/errors.py has it.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class _Recorder:
    """Takes the place of the client socket while gunicorn's `handle_error` runs, so that
    gunicorn still chooses the status, logs the error and writes the access log line, and
    what it would have sent (its HTML page) is kept here instead of sent."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def gettimeout(self) -> float:
        return 0.0  # non-blocking already: util.write_nonblock changes nothing

    def sendall(self, data: bytes) -> None:
        self.sent += data


class JSONErrorWorker(GeventWorker):
    """gunicorn's "gevent" worker; only the errors gunicorn answers itself differ."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer `exc` as gunicorn would (same status, log lines), with a JSON body."""
        recorder = _Recorder()
        super().handle_error(req, recorder, addr, exc)
        try:
            status_line = bytes(recorder.sent).split(b"\r\n", 1)[0].decode("latin-1")
            _, status_text, reason = (status_line.split(" ", 2) + ["", ""])[:3]
            status = int(status_text) if status_text.isdigit() else 500
            settings = getattr(self.wsgi, "config", {}).get("LLMVIZ")
            origins = tuple(getattr(settings, "cors_origins", ()))
            answer = error_answer(status, reason, exc, request_path(req, exc), origins)
        except Exception:  # a fault here must not leave the client with no answer at all
            self.log.exception("Could not shape the error as JSON; sending gunicorn's page")
            answer = bytes(recorder.sent)
        try:
            util.write_nonblock(client, answer)
        except Exception:  # the client is gone or not reading: nothing more to do
            self.log.debug("Failed to send error message.")


def request_path(req: Any, exc: BaseException) -> str | None:
    """The request's path, where gunicorn read that far: from the request it parsed, or
    from the request line an InvalidRequestLine repeats; None when unknown (a request line
    over the limit is never kept)."""
    req = req if req is not None else getattr(exc, "req", None)
    path = getattr(req, "path", None)
    if isinstance(path, str):
        return path
    if isinstance(req, str):  # the request line, or its target
        return next((part for part in req.split() if part.startswith("/")), None)
    return None


def error_answer(
    status: int, reason: str, exc: BaseException, path: str | None, cors_origins: tuple[str, ...]
) -> bytes:
    """A complete HTTP/1.1 answer (head and body) for an error gunicorn answers itself.

    `code` is the status's name as werkzeug spells it, as the app's own handler for
    werkzeug's HTTP errors makes it (414: `request_uri_too_long`); a 5xx other than 501
    is a server fault, told as the app tells one (`internal_error`, no detail).
    CORS: with `*` among the allowed origins the answer says so, as the app's answers do;
    otherwise it depends on an Origin header gunicorn may not have read, so it has no
    Access-Control-Allow-Origin and says `Vary: Origin`.
    """
    if status >= 500 and status != 501:
        message, code = "internal server error", "internal_error"
    else:
        name = HTTP_STATUS_CODES.get(status, reason or "error")
        code = name.lower().replace(" ", "_").replace("-", "_")
        detail = str(exc)
        if len(detail) > _DETAIL_CHARS:
            detail = detail[:_DETAIL_CHARS] + "…"
        message = f"{reason or name}: {detail}" if detail else reason or name
    if path is not None and (path == _OPENAI_PREFIX or path.startswith(_OPENAI_PREFIX + "/")):
        family = "server_error" if status >= 500 else "invalid_request_error"
        kind = _OPENAI_TYPES.get(status, family)
        payload: dict[str, Any] = {
            "error": {"message": message, "type": kind, "param": None, "code": code}
        }
    else:
        payload = {"error": message, "code": code}
    # As Flask's jsonify writes it outside debug mode: compact, keys sorted, one newline.
    body = (json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n").encode()
    headers = [
        f"HTTP/1.1 {status} {reason or HTTP_STATUS_CODES.get(status, 'Error')}",
        "Connection: close",  # gunicorn closes the connection after such an error
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-Request-ID: {uuid.uuid4().hex}",
    ]
    if "*" in cors_origins:
        headers += ["Access-Control-Allow-Origin: *"]
        headers += ["Access-Control-Expose-Headers: Retry-After, X-Request-ID"]
    elif cors_origins:
        headers += ["Vary: Origin"]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body
