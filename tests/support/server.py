"""Run the real gunicorn server on a free loopback port for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.sse_client import SSEEvent, message_data, parse

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, interval: float = 0.02, message: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid` (children, their children, ...), with its command line."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie is already dead; only its parent's wait() is missing
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: dict[int, str] = {}
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        pending += children.get(child, [])
    return found


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM a process started with `start_new_session`; after `grace` seconds, or once it
    has exited, SIGKILL its whole group (children left by a parent that died or hung)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# What `LiveServer.stats` can give for a model that is not loaded: it runs nothing.
IDLE: dict[str, Any] = {"active": 0, "queued": 0, "generated_tokens": 0, "decode_steps": 0}


class LiveServer:
    """`gunicorn -c gunicorn.conf.py wsgi:app` with the given environment."""

    def __init__(
        self, env: dict[str, str], base_env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        base = dict(os.environ if base_env is None else base_env)
        self.env = {**base, "HF_HUB_OFFLINE": base.get("HF_HUB_OFFLINE", "1"), **env}
        self.port = port or free_port()  # a given port: a replica restarted where it was
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)

    def start(self) -> LiveServer:
        """Start gunicorn and wait until /health answers."""
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{self.port}",
            "wsgi:app",
        ]
        # A session of its own: stop() can end the master and its workers as one group.
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(self._healthy, timeout=60, interval=0.1, message=f"gunicorn on {self.base}")
        except BaseException:
            self.stop()  # a server that never became healthy must not outlive the test
            raise
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(self.url("/health"), timeout=1).ok
        except (requests.ConnectionError, requests.Timeout):  # still booting
            return False

    def stop(self) -> None:
        """Stop gunicorn: SIGTERM, then SIGKILL to the whole group if it does not exit."""
        if self.proc is not None:
            stop_group(self.proc, 30)

    def url(self, path: str) -> str:
        """Absolute URL of `path` on this server."""
        return self.base + path

    def stats(self, model_id: str, default: dict[str, Any] | None = None) -> dict[str, Any]:
        """The model's entry in GET /models' `loaded` list: its counters (`active`, `queued`,
        `generated_tokens`, `decode_steps`, ...) and placement.

        A model that is not loaded gives `default` (e.g. `IDLE`), or fails the test when
        there is none.
        """
        loaded = requests.get(self.url("/models"), timeout=5).json()["loaded"]
        found = next((m for m in loaded if m["model_id"] == model_id), default)
        assert found is not None, f"{model_id} is not loaded: {[m['model_id'] for m in loaded]}"
        return found

    def post(self, path: str, **body: Any) -> dict[str, Any]:
        """POST `body` as JSON to `path`; the JSON answer, after checking that it is a 200."""
        response = requests.post(self.url(path), json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    def generate(self, **body: Any) -> str:
        """The `text` of a POST /generate (a 200)."""
        return self.post("/generate", **body)["text"]

    def stream(self, path: str = "/generate/stream", **body: Any) -> list[SSEEvent | str]:
        """POST `body` to a streaming endpoint (a 200); its whole stream, parsed."""
        response = requests.post(self.url(path), json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return parse(response.content.decode("utf-8"))

    def stream_text(self, **body: Any) -> str:
        """The text of a POST /generate/stream (a 200): its messages' data joined."""
        return "".join(message_data(self.stream(**body)))

    def log(self) -> str:
        """Everything gunicorn and the app printed so far."""
        return Path(self._log.name).read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (children of the arbiter)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def worker_cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the workers, all threads included."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.worker_pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def worker_threads(self) -> int:
        """OS threads in the workers: the engine's model threads and torch's pools."""
        total = 0
        for pid in self.worker_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(status.split("Threads:")[1].split()[0])
        return total

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
