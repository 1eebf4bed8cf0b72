"""Hand-offs between native threads (where torch runs) and request handlers.

Under gunicorn's gevent worker, `threading` and `queue` are monkey-patched: a
"thread" is a greenlet and a lock blocks the whole hub. Model work must run on
real OS threads, so this module takes the original primitives from gevent and
wakes waiting greenlets only through the hub's thread-safe callback. Under
`flask run` (no patching) the same API is plain threads and queues.
"""

from __future__ import annotations

import functools
import importlib
import queue
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

try:
    from gevent import monkey as _monkey
except ImportError:  # gevent is optional for `flask run`
    _monkey = None

T = TypeVar("T")
P = ParamSpec("P")


def gevent_patched() -> bool:
    """True when running under gevent's monkey-patching (gunicorn -k gevent)."""
    return _monkey is not None and _monkey.is_module_patched("threading")


def _original(module: str, name: str) -> Any:
    if _monkey is not None:
        return _monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


NativeQueue = _original("queue", "SimpleQueue")
native_lock = _original("_thread", "allocate_lock")
_start_new_thread = _original("_thread", "start_new_thread")


def native_logging_locks() -> None:
    """Under gevent, give `logging` real locks: native threads log too.

    A free gevent lock is tied to the hub of whoever takes it next. Native threads can
    have a hub: transformers loads weights with a ThreadPoolExecutor, which patching turns
    into greenlets on a hub of the loading thread's own. A request greenlet that waits for
    a log lock held by that thread is woken by a callback queued on that thread's hub,
    which the thread never runs (it is busy, then idles out): the request hangs for good
    (a /health probe on a kept-alive connection went unanswered). Logging holds its
    locks only to update its tables or write one record, never across a greenlet switch,
    so real locks are brief and safe for the hub.
    """
    if not gevent_patched():
        return
    import logging

    rlock = _original("_thread", "RLock")

    # `self`, as in the method it replaces: typeshed names the parameter so.
    def create_lock(self: logging.Handler) -> None:
        self.lock = rlock()
        logging._register_at_fork_reinit_lock(self)  # type: ignore[attr-defined]

    logging._lock = rlock()  # type: ignore[attr-defined]
    logging.Handler.createLock = create_lock  # type: ignore[method-assign]
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        if handler is not None:
            handler.lock = rlock()


def start_native_thread(target: Callable[[], None]) -> None:
    """Run `target` on a new OS thread, even under monkey-patching."""
    _start_new_thread(target, ())


def spawn(fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> Any:
    """Run `fn` in the background as a greenlet (under gevent) or a daemon thread.

    Unlike `threading.Thread.start`, this never blocks, so it is safe in a signal
    handler. Returns the greenlet (which `stop` can kill) or None for a thread.
    """
    if gevent_patched():
        import gevent

        return gevent.spawn(fn, *args, **kwargs)
    import threading

    threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True).start()
    return None


def stop(greenlets: list[Any]) -> None:
    """Kill background greenlets (a sleeping one would hold the worker process open)."""
    for greenlet in greenlets:
        if greenlet is not None:
            greenlet.kill(block=False)


def run_off_hub(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call `fn(*args, **kwargs)` on a native thread of gevent's pool, without stalling
    other greenlets, and return its result; its errors are raised here, in the caller
    (gevent's pool would also print each one as a traceback). Without gevent, a plain call.
    """
    if not gevent_patched():
        return fn(*args, **kwargs)
    import gevent

    call = functools.partial(fn, *args, **kwargs)
    ok, value = gevent.get_hub().threadpool.apply(_outcome, (call,))
    if ok:
        return value
    raise value


def run_on_new_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call `fn(*args, **kwargs)` on a native thread of its own, which exits once it returns;
    wait for it (blocking only the calling greenlet) and return its result or raise its error.

    For torch work that must leave no thread behind: each thread that runs a parallel
    torch operation keeps an OpenMP team of its own, and once libgomp manages more threads
    than there are CPUs it stops spinning between parallel regions (its "throttled" spin
    count), so every region of the model's worker pays a futex wake-up. Measured on the
    2-core development machine: loaded on a thread of gevent's pool (which lives on), the
    demo model's decoding step took 7.3 ms instead of 4.3 ms.
    """
    mailbox = Mailbox()
    call = functools.partial(fn, *args, **kwargs)

    def run() -> None:
        try:
            mailbox.put(_outcome(call))
        except BaseException as exc:  # SystemExit and the like: never leave the caller waiting
            mailbox.put((False, RuntimeError(f"the thread stopped: {exc!r}")))
            raise

    start_native_thread(run)
    while True:
        try:
            ok, value = mailbox.get(timeout=3600.0)
        except TimeoutError:
            continue  # a slow download: keep waiting, as run_off_hub does
        if ok:
            return value
        raise value


def _outcome(call: Callable[[], T]) -> tuple[bool, T | Exception]:
    """(True, the result) or (False, the exception): the pool never sees an error."""
    try:
        return True, call()
    except Exception as exc:
        return False, exc


class Mailbox:
    """A queue filled by any thread and drained by one request handler.

    `get` blocks only the calling greenlet (or thread), never the gevent hub.
    """

    def __init__(self) -> None:
        self._items = NativeQueue()
        self._loop = None
        if gevent_patched():
            import gevent
            import gevent.event

            self._loop = gevent.get_hub().loop
            self._ready = gevent.event.Event()

    def put(self, item: Any) -> None:
        """Deliver `item`; safe from any thread."""
        self._items.put(item)
        if self._loop is not None:
            self._loop.run_callback_threadsafe(self._ready.set)

    def get(self, timeout: float) -> Any:
        """The next item; raises TimeoutError after `timeout` seconds without one."""
        if self._loop is None:
            try:
                return self._items.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError from None
        while True:
            self._ready.clear()
            try:
                return self._items.get_nowait()
            except queue.Empty:
                pass
            # A put() after the clear() above sets the event, so no wake-up is lost.
            if not self._ready.wait(timeout):
                raise TimeoutError
