"""Telling at once whether the Hugging Face hub can be reached (loopback servers only)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.models import hub
from tests.support.server import free_port


class _Hub(BaseHTTPRequestHandler):
    hits = 0

    def do_HEAD(self):  # noqa: N802 (the http.server naming)
        type(self).hits += 1
        self.send_response(404)  # any answer means reachable, an error status included
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub():
    hub.forget()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    hub.forget()


def test_an_answering_endpoint_is_reachable_and_asked_once_a_minute(local_hub):
    before = _Hub.hits
    assert hub.reachable(local_hub) is True
    assert hub.reachable(local_hub) is True
    assert _Hub.hits == before + 1  # the second answer came from memory


def test_a_closed_port_is_unreachable_at_once():
    hub.forget()
    started = time.monotonic()
    assert hub.reachable(f"http://127.0.0.1:{free_port()}") is False
    assert time.monotonic() - started < 2.5
    hub.forget()
