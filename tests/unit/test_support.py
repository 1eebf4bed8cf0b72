"""The test support itself: the check that no process outlives the tests can see one."""

from __future__ import annotations

import os
import subprocess

from tests.support.server import descendants, wait_for


def _sleepers() -> list[int]:
    return [pid for pid, command in descendants(os.getpid()).items() if command == "sleep 30 "]


def test_descendants_finds_children_and_grandchildren():
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30; wait"])
    try:
        sleepers = wait_for(lambda: len(_sleepers()) == 2 and _sleepers(), 10, message="sleeps")
        assert shell.pid in descendants(os.getpid())
    finally:
        for pid in _sleepers():
            os.kill(pid, 9)
        shell.wait(timeout=10)
    assert not set(sleepers) & set(descendants(os.getpid()))
