"""Noticing that an HTTP client has gone away before a write fails.

Under gunicorn and Flask's server, from the request's socket. A server that hands the app
no socket but learns of the client leaving some other way (deploy/ray/bridge.py, under Ray
Serve) puts a callable under `CLIENT_GONE` in the WSGI environ instead.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Mapping
from typing import Any

# The environ key of a server's own "has the client gone?" callable (deploy/ray/bridge.py).
CLIENT_GONE = "llmviz.client_gone"


def disconnect_probe(environ: Mapping[str, Any]) -> Callable[[], bool]:
    """A cheap check, for the request's socket, that the peer has closed its side.

    A write to a closed connection often succeeds once (the kernel buffers it)
    and fails only at the next one; reading an end-of-file first saves those
    wasted decoding steps. A server's own `CLIENT_GONE` callable comes first; without it or
    a socket in the WSGI environ, it never fires.
    """
    told = environ.get(CLIENT_GONE)
    if callable(told):
        return lambda: bool(told())
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False
    return lambda: _peer_closed(sock)


def _peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        # Readable with nothing to read means end-of-file: the client closed the connection.
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed
        return True
