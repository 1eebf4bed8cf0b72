"""API keys: when any are configured, every request needs one but /health, the viewer page
and its files (they hold no data), and CORS preflights."""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from app.errors import APIError

_PUBLIC = {"ops.health", "viewer.page", "viewer.asset"}  # the viewer holds no data
_DOCS = {"docs.openapi", "docs.page", "docs.asset"}
_EXTENSION = "llmviz.api_keys"  # app.extensions: whether keys are checked


class Unauthorized(APIError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str, error: str | None = None) -> None:
        challenge = 'Bearer realm="llmviz"' + (f', error="{error}"' if error else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge})


def init_app(app: Flask) -> None:
    """Check `Authorization: Bearer <key>` on every request that needs it."""
    settings = app.config["LLMVIZ"]
    keys = [key.encode() for key in settings.all_api_keys()]
    # Read once, here: whatever else tells whether keys are on (the OpenAPI document) asks
    # `required`, never the file again, which may have changed since.
    app.extensions[_EXTENSION] = bool(keys)
    if not keys:
        # No key source configured: Settings refuses one that is set but yields no key,
        # so an empty list here never means "keys were meant but none were read".
        return
    public = _PUBLIC | (_DOCS if settings.public_docs else set())

    @app.before_request
    def _require_key():
        if request.method == "OPTIONS" or request.endpoint in public:
            return  # CORS preflights carry no credentials by design
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this server needs an API key: send `Authorization: Bearer <key>`")
        if not _known(token.strip().encode(), keys):
            raise Unauthorized("the API key is not valid", error="invalid_token")

    @app.after_request
    def _vary_on_key(response: Response) -> Response:
        # Whether the answer is a 401 or the data depends on the key. HTTP caches are
        # mostly careful already (a shared cache reuses no answer to a request that had
        # Authorization; a 401 is not cacheable by default), but saying so keeps a cache
        # set up to store more from giving one client's answer to another.
        if request.method != "OPTIONS" and request.endpoint not in public:
            response.vary.add("Authorization")
        return response


def required(app: Flask) -> bool:
    """Whether `app` checks keys: the keys read when it was created, not the file now."""
    return bool(app.extensions.get(_EXTENSION, False))


def _known(token: bytes, keys: list[bytes]) -> bool:
    # Compare with every key, in constant time, with no early exit.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key)
    return found
