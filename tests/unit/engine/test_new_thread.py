"""`run_on_new_thread`: a call on a native thread that exits, and model loads made on one.

Why it matters: a thread that ran a parallel torch operation keeps an OpenMP team, and
once libgomp manages more threads than there are CPUs, every team's workers stop
spinning between parallel regions, so the model's worker thread pays a wake-up per
region (app/engine/threads.py). A load must leave no such thread behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from app.engine.threads import run_on_new_thread

REPO = Path(__file__).resolve().parents[3]


def _exited(native_id: int, within: float = 5.0) -> bool:
    """Whether the thread with this native id has left the process (Linux's /proc)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/self/task/{native_id}"):
            return True
        time.sleep(0.01)
    return False


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


def test_the_call_runs_on_another_thread_which_then_exits():
    value, native_id = run_on_new_thread(lambda x: (x * 2, threading.get_native_id()), 21)
    assert value == 42
    assert native_id != threading.get_native_id()
    assert _exited(native_id)


def test_the_call_s_error_is_raised_in_the_caller():
    def broken() -> None:
        raise ValueError("no such weights")

    with pytest.raises(ValueError, match="no such weights"):
        run_on_new_thread(broken)


def test_under_gevent_other_greenlets_run_while_it_waits():
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from app.engine.threads import run_on_new_thread
        real_sleep = monkey.get_original("time", "sleep")
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(20)])
        result = run_on_new_thread(lambda: real_sleep(0.5) or "loaded")
        print(result, len(ticks) >= 10)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["loaded", "True"]  # the hub ran while the thread slept


def test_a_model_load_under_gevent_leaves_no_thread_behind(model_root):
    # As gunicorn's gevent worker runs it: weights read on gevent's thread pool would leave
    # that pool thread, and its OpenMP team, alive for good.
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import os, threading, time
        from app import create_app, models
        from app.engine.threads import run_off_hub
        app = create_app({{"model_root": {str(model_root)!r}}})
        from app.models import loading
        seen = []
        real_weights = loading._load_weights
        def weights_and_note(*a):
            seen.append(threading.get_native_id())
            return real_weights(*a)
        loading._load_weights = weights_and_note
        models.cache.get(models.resolve("tiny-gpt2", app.config["LLMVIZ"]))
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/self/task/{{seen[0]}}") and time.monotonic() < deadline:
            run_off_hub(time.sleep, 0.01)  # requests keep gevent's pool threads busy
        print(len(seen), seen[0] != threading.get_native_id(),
              os.path.exists(f"/proc/self/task/{{seen[0]}}"), flush=True)
        os._exit(0)  # the model's worker thread is no concern of this test
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "False"]  # weights read once, elsewhere; gone
