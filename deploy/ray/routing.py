"""Requests for a model go to the replicas that hold it: Serve's model multiplexing, for a
model id that travels in the JSON body.

Serve's proxy routes on the `serve_multiplexed_model_id` header (neither it nor nginx reads
bodies): a request that carries it goes to a replica that has reported that id, else to
the one with the fewest, else to any. A replica reports the ids its `@serve.multiplexed`
function has returned, the most recent `max_num_models_per_replica` of them, and forgets
the least recently used, as the app's cache does with `LLMVIZ_CACHE_SIZE` models.

Which models are in memory stays the app's cache's business (it loads, shares one copy,
retires, unloads on `DELETE /models/<id>` and `LLMVIZ_MODEL_TTL`); `ModelRouting` only
tells Serve, and only once the app has accepted the request (a 2xx or 3xx answer, so after
the API key, the allowlist and the id were checked) and the model is loaded or loading
here. A request with a wrong key or an unknown id never moves another model out of a
replica's report. A request without the header works as before: whichever replica gets it
loads the model.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

HEADER = "serve_multiplexed_model_id"  # as Serve matches it: any case, `-` or `_`


class ModelRouting:
    """ASGI middleware: after an accepted request for a model held here, `hold` its id
    (the deployment's `@serve.multiplexed` function), so Serve sends the next ones here."""

    def __init__(
        self,
        app: Any,
        hold: Callable[[str], Awaitable[object]],
        held_here: Callable[[str], bool],
    ) -> None:
        self.app = app
        self.hold = hold
        self.held_here = held_here

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        model_id = model_header(scope) if scope["type"] == "http" else None
        if not model_id:
            return await self.app(scope, receive, send)
        accepted = False

        async def send_and_note(message: Any) -> None:
            nonlocal accepted
            if message["type"] == "http.response.start":
                accepted = message["status"] < 400
                # A stream's head goes out before its model is loaded, a cold one's load
                # maybe not yet begun: held_here() may say no now and yes at the end.
                if accepted:
                    await self._note(model_id)
            await send(message)

        await self.app(scope, receive, send_and_note)
        if accepted:
            await self._note(model_id)

    async def _note(self, model_id: str) -> None:
        if not self.held_here(model_id):
            return
        try:
            await self.hold(model_id)  # a dictionary update once the id is known
        except Exception:  # routing is a hint: the answer must not suffer for it
            log.exception("could not report model %r to Serve", model_id)


def model_header(scope: Any) -> str | None:
    """The request's `serve_multiplexed_model_id` header, as Serve reads it; None if absent."""
    for name, value in scope.get("headers", []):
        if name.decode("latin-1").lower().replace("-", "_") == HEADER:
            return value.decode("latin-1").strip() or None
    return None
