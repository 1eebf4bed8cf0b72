"""Compiling the fused decoding step with the machine's C compiler, once per process.

The C source ships with the package (no wheel to build at install); the first model
that can use it compiles it into a temporary folder (about a second), for this CPU
(`-march=native`), with OpenMP. The library is loaded from there and the folder
removed: the process keeps its mapping, so no stale build outlives the source or lands
on another machine.

OpenMP: `-fopenmp` links the system's `libgomp.so.1` (clang is asked for it by name,
`-fopenmp=libgomp`). torch's wheel ships a `libgomp.so.1` of its own, loaded first (torch
is imported before this module), and the dynamic loader binds the library's OpenMP calls
to that already-loaded copy by its soname (checked: one libgomp mapped in the process).
So a fused step's parallel region uses the same thread team as torch's operators, with
no second team competing for the cores. Without a compiler, OpenMP or a writable
temporary folder there is no fused step, and the lean step (app/engine/lean.py) runs
every row count.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch  # noqa: F401  (loaded first: its libgomp is the one the library binds to)

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gpt2_step.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c11"]
_TIMEOUT_S = 120
_lock = threading.Lock()  # two models loading at once build once
_built: dict[Path, ctypes.CDLL | KernelUnavailable] = {}


class KernelUnavailable(RuntimeError):
    """The fused step cannot be built or loaded here; the message says why."""


def library(source: Path = SOURCE) -> ctypes.CDLL:
    """The compiled fused step (or another C file: the benchmarks' probes), built on first use.

    Raises:
        KernelUnavailable: no C compiler, a compiler error, or a library that does not load.
            The failure is remembered: the process does not try again.
    """
    with _lock:
        if source not in _built:
            try:
                _built[source] = _build(source)
            except KernelUnavailable as exc:
                _built[source] = exc
        built = _built[source]
        if isinstance(built, KernelUnavailable):
            raise built
        return built


def _build(source: Path = SOURCE) -> ctypes.CDLL:
    compiler = _compiler()
    try:
        with tempfile.TemporaryDirectory(prefix="llmviz-kernels-") as folder:
            return _compile(compiler, source, Path(folder))
    except OSError as exc:  # no writable temporary folder, a full disk: no fused step
        raise KernelUnavailable(f"no folder to build {source.name} in: {exc}") from exc


def _compile(compiler: list[str], source: Path, folder: Path) -> ctypes.CDLL:
    target = folder / f"{source.stem}.so"
    problem = ""
    # -march=native where the compiler takes it (this CPU's vector width), else its default.
    for tuning in (["-march=native"], []):
        command = [*compiler, *_FLAGS, *_openmp(compiler), *tuning, str(source)]
        code, output = _run([*command, "-o", str(target), "-lm"], folder / "output.txt")
        if code == 0 or (code is None and target.exists()):
            break
        problem = (output.strip().splitlines() or [f"exit status {code}"])[-1]
    else:
        raise KernelUnavailable(f"{compiler[0]} could not build {source.name}: {problem}")
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"the built library does not load: {exc}") from exc


def _openmp(compiler: list[str]) -> list[str]:
    """The flag for OpenMP through libgomp: clang's plain -fopenmp means LLVM's libomp, a
    second runtime beside torch's libgomp, with threads of its own competing for the cores."""
    return ["-fopenmp=libgomp"] if "clang" in Path(compiler[0]).name else ["-fopenmp"]


def _run(command: list[str], output: Path) -> tuple[int | None, str]:
    """Run `command` to its end (at most _TIMEOUT_S): its exit code (None when another part
    of the process reaped it first) and its output.

    Not `subprocess`: under gevent's monkey-patching, `subprocess` and `os.posix_spawn` need
    gevent's default loop, and a model loads on a native thread. The unpatched
    `posix_spawn` and `waitpid` work from any thread.
    """
    spawn, waitpid, sleep = _unpatched()
    with open(output, "wb") as sink:
        redirect = [
            (os.POSIX_SPAWN_DUP2, sink.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, sink.fileno(), 2),
        ]
        try:
            pid = spawn(command[0], command, dict(os.environ), file_actions=redirect)
        except OSError as exc:
            raise KernelUnavailable(f"{command[0]} did not run: {exc}") from exc
    deadline = time.monotonic() + _TIMEOUT_S
    code: int | None = None
    while True:
        try:
            done, status = waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # gevent's SIGCHLD watcher reaped it: the status is gone
            break
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # reaped by gevent's watcher
                waitpid(pid, 0)
            raise KernelUnavailable(f"{command[0]} took over {_TIMEOUT_S} s")
        sleep(0.02)
    return code, output.read_text(errors="replace")


def _unpatched() -> tuple[Any, Any, Any]:
    """`os.posix_spawn`, `os.waitpid` and `time.sleep` as the standard library has them."""
    try:
        from gevent import monkey
    except ImportError:
        return os.posix_spawn, os.waitpid, time.sleep
    return (
        monkey.get_original("os", "posix_spawn"),
        monkey.get_original("os", "waitpid"),
        monkey.get_original("time", "sleep"),
    )


def _compiler() -> list[str]:
    """`$CC` (a command, arguments allowed: `ccache gcc`), else the first of gcc, cc and
    clang on the PATH: the program's path and its arguments."""
    named = shlex.split(os.environ.get("CC", ""))
    candidates = [named] if named else [["gcc"], ["cc"], ["clang"]]
    for program, *arguments in candidates:
        found = shutil.which(program)
        if found:
            return [found, *arguments]
    looked = ", ".join(" ".join(candidate) for candidate in candidates)
    raise KernelUnavailable(f"no C compiler found (looked for {looked})")
