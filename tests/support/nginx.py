"""Run Debian's nginx with deploy/nginx.conf, rendered for free loopback ports, as a plain
process: no root paths (pid, logs and temp files live in a folder of its own), no daemon."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.server import REPO, free_port, stop_group, wait_for

NGINX = "/usr/sbin/nginx"
RENDER = REPO / "deploy" / "render_nginx.py"


def installed() -> bool:
    """Whether Debian's nginx is there to run."""
    return Path(NGINX).exists()


def render(out: Path, runtime_dir: Path, *args: str) -> None:
    """deploy/render_nginx.py, as an operator runs it, with the tests' runtime folder."""
    if os.getuid() == 0:  # workers run as this user, who owns the runtime folder
        user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    else:
        user = ""  # not root: the directive would be ignored with a warning; drop it
    command = [sys.executable, str(RENDER), "--runtime-dir", str(runtime_dir), "--user", user]
    subprocess.run([*command, *args, "-o", str(out)], check=True, cwd=REPO)


class Nginx:
    """`nginx -p <dir> -c <dir>/nginx.conf -g 'daemon off;'` in front of `servers`.

    `servers` are `host:port` strings, optionally followed by nginx server parameters
    (`"127.0.0.1:8001 backup"`); `options` are more render_nginx.py flags.
    """

    def __init__(self, servers: list[str], *options: str) -> None:
        self.servers = servers
        self.options = options
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="llmviz-nginx-"))
        self.conf = self.dir / "nginx.conf"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        """Render the config, start nginx and wait until it accepts connections."""
        servers = [arg for server in self.servers for arg in ("--server", server)]
        listen = ["--listen", f"127.0.0.1:{self.port}"]
        render(self.conf, self.dir, *listen, *servers, *self.options)
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=open(self.dir / "stdout.log", "wb"),  # noqa: SIM115 (the process keeps it)
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() ends the master and its workers as one group
        )
        try:
            wait_for(self._listening, timeout=15, interval=0.05, message=f"nginx on {self.base}")
        except BaseException:
            self.stop()
            raise
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.error_log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop nginx (fast shutdown), then make sure nothing of it is left."""
        if self.proc is not None:
            stop_group(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, path: str) -> str:
        """Absolute URL of `path` through nginx."""
        return self.base + path

    def access_log(self) -> list[dict[str, Any]]:
        """The access log: one JSON object a request (format `llmviz` of deploy/nginx.conf)."""
        path = self.dir / "llmviz-access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def entry(self, request_id: str, timeout: float = 5) -> dict[str, Any]:
        """The access log's line for `request_id` (written when the request ends)."""

        def find():
            return next((e for e in self.access_log() if e["request_id"] == request_id), None)

        return wait_for(find, timeout=timeout, message=f"access log line of {request_id}")

    def error_log(self) -> str:
        """nginx's error log and anything it printed."""
        return "".join(
            (self.dir / name).read_text(errors="replace")
            for name in ("error.log", "stdout.log")
            if (self.dir / name).exists()
        )

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
