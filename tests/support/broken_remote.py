"""A remote OpenAI-compatible server that fails on purpose, for the remote-model tests.

Each mode is one way a real remote fails: it never answers (`hang`), answers 500, answers
401 (a wrong key in this server's settings), or cuts its stream after a few tokens
(`cut`: the chunks a real completion stream sends, then the connection closes without
`[DONE]`). Loopback only.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CUT_AFTER = 3  # tokens sent before a `cut` stream breaks off


def _chunk(text: str) -> bytes:
    choice = {
        "index": 0,
        "text": text,
        "finish_reason": None,
        "logprobs": {"tokens": [text], "token_logprobs": [-0.5], "top_logprobs": [{text: -0.5}]},
    }
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


class BrokenRemote:
    """`with BrokenRemote("cut") as remote:` serves at `remote.url` (an OpenAI API root)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if owner.mode == "hang":
                    time.sleep(30)
                    return
                if owner.mode in ("500", "401"):
                    body = json.dumps({"error": {"message": f"broken on purpose ({owner.mode})"}})
                    self.send_response(int(owner.mode))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body.encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i in range(CUT_AFTER):
                    self.wfile.write(_chunk(f" w{i}"))
                    self.wfile.flush()
                    time.sleep(0.05)
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> BrokenRemote:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
