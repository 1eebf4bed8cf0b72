"""The static checks CI runs, as tests: ruff's lint and format, and mypy (pyproject.toml).

Each runs the virtualenv's own executable (next to this Python) from the repository root,
so `pytest` alone tells whether a change would pass them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*command: str, timeout: float) -> subprocess.CompletedProcess:
    """`command` (a virtualenv executable and its arguments) in the repository root."""
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _report(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_ruff_check_passes():
    result = _run("ruff", "check", ".", timeout=120)
    assert result.returncode == 0, _report(result)


def test_ruff_format_leaves_every_file_as_it_is():
    result = _run("ruff", "format", "--check", ".", timeout=120)
    assert result.returncode == 0, _report(result)


def test_mypy_passes():
    # Files and options come from [tool.mypy]; a cold run (no .mypy_cache) reads the types
    # of torch and transformers and takes about 90 s on 2 cores.
    result = _run("mypy", timeout=600)
    assert result.returncode == 0, _report(result)
