"""Locks shared by request greenlets and native threads, under gevent's monkey-patching.

gunicorn's gevent worker patches `threading`, so each scenario runs in a fresh
interpreter that patches first, as the worker does. The native thread is one of
gevent's pool threads with a hub of its own, as transformers' loading gives it (its
ThreadPoolExecutor becomes greenlets on such a hub): a gevent lock that thread holds
would wake a waiting greenlet through that hub's loop, which never runs again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PRELUDE = """
from gevent import monkey

monkey.patch_all()

import concurrent.futures
import logging
import sys
import time

import gevent

from app.engine import threads

real_sleep = monkey.get_original("time", "sleep")
held = threads.native_lock()  # held by the pool thread while it holds the shared lock
held.acquire()


def with_a_hub_of_its_own():
    # What transformers' from_pretrained does on the loading thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: None).result()


def hold_in_a_pool_thread(hold):
    def task():
        with_a_hub_of_its_own()
        hold()

    return gevent.get_hub().threadpool.spawn(task)


def wait_then(action):
    # A request greenlet that needs the lock while the pool thread holds it.
    while held.locked():
        gevent.sleep(0.005)
    action()


def answered(greenlet):
    greenlet.join(timeout=10)
    print("answered" if greenlet.dead else "hung")
"""


def _run(scenario: str) -> str:
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(scenario)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_greenlet_that_logs_while_a_loading_thread_logs_is_answered():
    scenario = """
    class SlowHandler(logging.Handler):  # created before the fix, like basicConfig's handler
        def emit(self, record):
            if record.msg == "from the pool thread":
                held.release()  # the handler's lock is held now: let the greenlet in
                real_sleep(0.3)

    log = logging.getLogger("shared")
    log.addHandler(SlowHandler())
    log.setLevel(logging.INFO)
    threads.native_logging_locks()

    pool_task = hold_in_a_pool_thread(lambda: log.info("from the pool thread"))
    answered(gevent.spawn(wait_then, lambda: log.info("from a request")))
    pool_task.get(timeout=10)
    """
    assert _run(scenario) == "answered"


def test_handlers_made_later_get_real_locks():
    scenario = """
    threads.native_logging_locks()
    native = monkey.get_original("_thread", "RLock")
    print(type(logging.StreamHandler().lock) is native and type(logging._lock) is native)
    """
    assert _run(scenario) == "True"


def test_starting_a_load_while_a_loading_thread_starts_threads_is_answered():
    scenario = """
    import threading
    from types import SimpleNamespace

    from app.models.cache import ModelCache
    from app.models.resolution import ModelSpec

    def hold_the_thread_table():  # as Thread.start does for the executor's threads
        with threading._active_limbo_lock:
            held.release()
            real_sleep(0.3)

    cache = ModelCache(lambda *args: SimpleNamespace())
    spec = ModelSpec("stub", "stub", True)
    pool_task = hold_in_a_pool_thread(hold_the_thread_table)
    answered(gevent.spawn(wait_then, lambda: cache.get(spec, timeout=5)))
    pool_task.get(timeout=10)
    """
    assert _run(scenario) == "answered"
