"""A stand-in for the Hugging Face hub: serves model folders the way the hub's `resolve`
URLs and model API do, throttled, for the real huggingface_hub client (via HF_ENDPOINT).

Serves, for each repo id given:
- `GET /api/models/<repo>[/revision/<rev>]`: `id`, `sha` and `siblings` with sizes;
- `HEAD|GET /<repo>/resolve/<rev>/<file>`: the file, with `X-Repo-Commit`, `ETag` and
  `Content-Length`, sent `chunk` bytes at a time with `pause` seconds between chunks;
- `GET /api/models/<repo>/tree/...`: an empty listing (no subfolders);
- a 404 with `X-Error-Code: EntryNotFound` (or `RepoNotFound`) for anything else, as the
  hub answers, so that clients treat optional files as absent.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.server import free_port

SHA = "0123456789abcdef0123456789abcdef01234567"  # the one commit of every repo


class HubServer:
    """Serve `repos` (repo id -> folder) on loopback; a context manager."""

    def __init__(self, repos: dict[str, Path], chunk: int = 16384, pause: float = 0.05) -> None:
        self.repos = repos
        self.chunk, self.pause = chunk, pause
        self.requests: list[str] = []  # "METHOD path", in order
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._httpd.daemon_threads = True

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                path = self.path.split("?")[0]
                api = re.fullmatch(r"/api/models/(.+?)(?:/revision/[^/]+)?", path)
                if api and api[1] in hub.repos:
                    return self._json(hub.info(api[1]))
                tree = re.fullmatch(r"/api/models/(.+?)/tree/.*", path)
                if tree and tree[1] in hub.repos:
                    return self._json([])  # no subfolders (e.g. additional_chat_templates)
                for repo, folder in hub.repos.items():
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix) :].split("/", 1)[-1]
                        file = folder / name
                        if file.is_file() and "/" not in name:
                            return self._file(file, body)
                        return self._missing("EntryNotFound")
                self._missing("RepoNotFound")

            def _json(self, value: object) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _missing(self, code: str) -> None:
                data = b'{"error": "not found"}'
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _file(self, file: Path, body: bool) -> None:
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", SHA)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                for start in range(0, len(data), hub.chunk):
                    self.wfile.write(data[start : start + hub.chunk])
                    self.wfile.flush()
                    time.sleep(hub.pause)

        return Handler

    def info(self, repo: str) -> dict:
        """The model API's answer for `repo` (with file sizes, as `blobs=true` asks)."""
        files = sorted(p for p in self.repos[repo].iterdir() if p.is_file())
        siblings = [{"rfilename": p.name, "size": p.stat().st_size} for p in files]
        return {"id": repo, "modelId": repo, "sha": SHA, "siblings": siblings}
