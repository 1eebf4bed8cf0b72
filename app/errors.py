"""The error family every layer raises, and the translation of the engine's own errors.

Each error carries its HTTP status and a machine-readable code; app/web/handlers.py
turns them (and everything else) into one JSON shape: `{"error": message, "code": code}`.
"""

from __future__ import annotations

from app.engine import QueueFull, TaskAbandoned


class APIError(Exception):
    """An error the client should see: `{"error": message, "code": code}` with `status`."""

    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field at fault, when there is one

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
    """This worker is draining (app/ops/lifecycle.py): its last seconds before it exits.

    Retry-After 5: the worker is gone within 2 s. On a reload other workers already serve
    and any retry works; on a stop, what answers next is a restarted replica (or another,
    which nginx tries first), and a restart takes seconds (importing torch alone, several
    on a small machine). 5 s, as nginx's own 502/503 pages in deploy/nginx.conf say.
    """

    status, code = 503, "shutting_down"

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry shortly", headers={"Retry-After": "5"})


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class Overloaded(APIError):
    """Too much work waits: retry after `retry_after` whole seconds (the Retry-After header);
    a full model queue sizes it from its backlog (app/engine/backlog.py)."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ClientClosedRequest(APIError):
    """The client went away before the answer was ready; nobody reads this (nginx's 499)."""

    status, code = 499, "client_closed_request"

    def __init__(self) -> None:
        super().__init__("the client closed the connection before the answer was ready")


class ModelLoadFailed(APIError):
    status, code = 500, "model_load_failed"


class GenerationFailed(APIError):
    status, code = 500, "generation_failed"


def translate(exc: Exception) -> APIError | None:
    """The APIError a client should see for `exc`; None for an unexpected failure."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        return Overloaded(str(exc), exc.retry_after)
    if isinstance(exc, TaskAbandoned):
        return ClientClosedRequest()
    return None


class RemoteFailed(APIError):
    """A remote model's server (LLMVIZ_REMOTE_MODELS) could not be reached or failed; the
    message says which and passes on the remote's own."""

    status, code = 502, "remote_failed"


class RemoteTimeout(APIError):
    """A remote model's server did not answer within its `timeout`."""

    status, code = 504, "remote_timeout"


class RemoteRefused(APIError):
    """A remote model's server refused the request as the client sent it (its 4xx), with
    that status and the remote's message."""

    status, code = 400, "remote_refused"  # or the remote's 413, 422, 429

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status


class NotAvailableRemotely(APIError):
    """What a remote model cannot give (attention, the logit lens, residual streams)."""

    status, code = 400, "not_available_for_remote_model"
