"""deploy/ray/bridge.py: WSGI apps (a scripted one, then the real app) as ASGI apps whose
streams go out chunk by chunk and stop when the request's task is cancelled, as Serve's
proxy cancels it when the client leaves. No Ray needed: the bridge is driven as an ASGI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("a2wsgi", reason="deploy/ray/requirements.txt is not installed")

from a2wsgi import WSGIMiddleware  # noqa: E402

from app import models  # noqa: E402
from deploy.ray.bridge import CLIENT_GONE, WSGIBridge  # noqa: E402
from tests.support.server import wait_for  # noqa: E402


def _scope(method: str = "GET", path: str = "/", headers: list | None = None) -> dict:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


class _Call:
    """One request through an ASGI app on a loop of its own: its messages as they come."""

    def __init__(self, asgi: Any, scope: dict, body: bytes = b"") -> None:
        self.messages: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(asgi(scope, self._receive(body), self.messages.put))

    @staticmethod
    def _receive(body: bytes) -> Callable:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays until the task is cancelled
            return {"type": "http.disconnect"}

        return receive

    async def next(self, timeout: float = 30) -> dict:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def leave(self) -> None:
        """What Serve does when the client goes: cancel the request's task."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _counting_app(total: int, made: list[int], closed: threading.Event, pause: float = 0.005):
    """A WSGI app streaming `total` chunks, noting each one made and when it is closed."""

    def app(environ: dict, start_response: Callable) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Request-ID", "app-id")])

        def chunks():
            try:
                for i in range(total):
                    made.append(i)
                    yield f"{i}\n".encode()
                    time.sleep(pause)
            finally:
                closed.set()

        return chunks()

    return app


def test_chunks_go_out_one_by_one_and_dropped_headers_stay_out():
    made: list[int] = []
    closed = threading.Event()

    async def main() -> list[bytes]:
        bridge = WSGIBridge(_counting_app(5, made, closed, pause=0.05), 4, drop=("x-request-id",))
        call = _Call(bridge, _scope())
        start = await call.next()
        assert start["status"] == 200
        assert dict(start["headers"]) == {b"content-type": b"text/plain"}
        bodies = []
        while True:
            message = await call.next()
            bodies.append(message["body"])
            # Each chunk arrives while the app is still making the next ones.
            if message.get("more_body"):
                assert len(made) <= int(message["body"]) + 2
            else:
                break
        await call.task
        return bodies

    assert asyncio.run(main()) == [b"0\n", b"1\n", b"2\n", b"3\n", b"4\n", b""]
    assert closed.is_set()


@pytest.mark.parametrize("bridged", [True, False], ids=["bridge", "a2wsgi-alone"])
def test_a_client_that_leaves_closes_the_iterator_only_through_the_bridge(bridged):
    """a2wsgi alone iterates the answer to its end for nobody (here 300 chunks; an endless
    one would block its thread for good once the send queue is full)."""
    made: list[int] = []
    closed = threading.Event()
    app = _counting_app(300, made, closed)

    async def main() -> None:
        asgi = WSGIBridge(app, 4) if bridged else WSGIMiddleware(app, 4, send_queue_size=1000)
        call = _Call(asgi, _scope())
        await call.next()  # the head
        await call.next()  # the first chunk
        await call.leave()
        assert await asyncio.to_thread(closed.wait, 10)

    asyncio.run(main())
    if bridged:
        assert len(made) < 50, f"{len(made)} chunks made for a client that left after 1"
    else:
        assert len(made) == 300


def test_the_app_learns_of_the_client_leaving_between_chunks():
    """A request busy without yielding (waiting for its model, or for a whole answer)."""
    seen = threading.Event()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        client_gone = environ[CLIENT_GONE]
        deadline = time.monotonic() + 10
        while not client_gone() and time.monotonic() < deadline:
            time.sleep(0.01)
        if client_gone():
            seen.set()
        start_response("499 Client Closed Request", [])
        return []

    async def main() -> None:
        call = _Call(WSGIBridge(app, 2), _scope())
        await asyncio.sleep(0.05)
        await call.leave()
        assert await asyncio.to_thread(seen.wait, 5)

    asyncio.run(main())


def test_the_real_app_streams_token_by_token_and_stops_when_the_client_leaves(app, fresh_cache):
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 1000}
    body.update(temperature=0, ignore_eos=True)
    spec = models.resolve("slow-gpt2", app.config["LLMVIZ"])

    def stats() -> dict:
        lm = models.cache.peek(spec)
        return lm.stats() if lm is not None else {"active": 0, "generated_tokens": 0}

    async def main() -> tuple[int, int]:
        data = json.dumps(body).encode()
        scope = _scope("POST", "/generate/stream", [(b"content-length", str(len(data)).encode())])
        call = _Call(WSGIBridge(app, 4), scope, data)
        assert (await call.next())["status"] == 200
        events = 0
        while events < 8:  # the prompt's echo, then tokens, each in a message of its own
            chunk = (await call.next())["body"]
            events += chunk.count(b"\n\n")
        assert stats()["active"] == 1
        await call.leave()
        await asyncio.to_thread(
            wait_for, lambda: stats()["active"] == 0, 5, 0.01, "the generation to stop"
        )
        return events, stats()["generated_tokens"]

    events, made = asyncio.run(main())
    assert made < 100, f"{made} tokens made for a client that left after {events} events"
