"""The Flask app as an ASGI app, for Ray Serve: a2wsgi's WSGIMiddleware, plus the client's
leaving.

a2wsgi runs the WSGI app on a thread of its own pool and hands each chunk of the answer to
the event loop as the iterator yields it, so a Server-Sent Events stream goes out event by
event, while other requests run on other threads. (asgiref 3.13's `WsgiToAsgi` sends chunks
as they come too, but runs every request on one shared thread, `sync_to_async` being thread
sensitive by default, so one stream would hold up every other request, `/health` included;
and it never closes the response iterator.)

What a2wsgi does not do is tell the app that the client has gone. Serve's proxy cancels the
request's task in the replica; a2wsgi's sender task stops with it, while its thread goes on
iterating the answer (a model generating for nobody) until the send queue is full, and then
waits on that queue for good, holding a pool thread.

`WSGIBridge` records the cancellation, and the app's thread learns of it at once:
- at its next chunk, `send` raises, a2wsgi closes the response iterator, and our streams
  cancel their jobs in `finally` (app/web/serving/loop.py);
- sooner, where no chunk is due (a request waiting for its model, a `/generate` or an
  `/inspect` answered in one piece), through `environ["llmviz.client_gone"]`, which the
  app's disconnect probe reads (app/web/disconnect.py);
- a send already waiting on a full queue gives up within `_POLL_SECONDS`.

It also leaves out the answer headers that the server in front sets itself (`drop`): Serve's
proxy adds `X-Request-ID` to every answer (the client's id, or one it made and passed to
the app), and the app's own would repeat it.

Nothing here imports Ray: the unit tests drive it as a plain ASGI app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from a2wsgi.wsgi import WSGIMiddleware, WSGIResponder

# The environ key app/web/disconnect.py reads: a callable, true once the client has gone.
CLIENT_GONE = "llmviz.client_gone"
# How often a send that waits for room in a full queue checks whether the client has gone.
_POLL_SECONDS = 0.1


class ClientGone(Exception):
    """The client left: nothing more can be sent (raised on the app's thread)."""


class _Responder(WSGIResponder):
    """One request: a2wsgi's responder, stopped when its task is cancelled."""

    def __init__(self, app: Any, executor: Any, queue_size: int, drop: frozenset[str]) -> None:
        super().__init__(app, executor, queue_size)
        self.gone = threading.Event()
        self.drop = drop

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:  # Serve's proxy saw the client leave
            self.gone.set()
            raise

    def wsgi(self, environ: Any, start_response: Any) -> None:
        """Run the app on this pool thread; a client that left ends it quietly."""
        environ[CLIENT_GONE] = self.gone.is_set
        try:
            super().wsgi(environ, start_response)  # closes the app's iterator, whatever happens
        except ClientGone:
            pass  # nobody awaits this thread's result any more

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        """a2wsgi's, less the headers the server in front sets itself."""
        kept = [(name, value) for name, value in headers if name.lower() not in self.drop]
        return super().start_response(status, kept, exc_info)

    def send(self, message: Any) -> None:
        """Queue `message` for the event loop; raise ClientGone once the client has left."""
        if self.gone.is_set():
            raise ClientGone
        queued = asyncio.run_coroutine_threadsafe(self.send_queue.put(message), loop=self.loop)
        while True:
            try:
                queued.result(timeout=_POLL_SECONDS)
                return
            except concurrent.futures.TimeoutError:  # the queue is full: a slow reader
                if self.gone.is_set():
                    queued.cancel()
                    raise ClientGone from None


class WSGIBridge(WSGIMiddleware):
    """A WSGI app as an ASGI app whose streams stop when the client goes.

    `workers` threads run requests: each running request, a stream included, holds one
    for its whole length, so give it at least Serve's `max_ongoing_requests`. `drop`: the
    answer headers (lower case) that the server in front sets itself.
    """

    def __init__(
        self,
        app: Any,
        workers: int,
        drop: tuple[str, ...] = (),
        send_queue_size: int = 10,
    ) -> None:
        super().__init__(app, workers=workers, send_queue_size=send_queue_size)
        self.drop = frozenset(drop)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        responder = _Responder(self.app, self.executor, self.send_queue_size, self.drop)
        await responder(scope, receive, send)
