"""The model cache: load each model once, keep the most recently used, unload the rest."""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from app.config import Settings
from app.engine import GenerationJob, ModelTask, WorkerClosed
from app.engine.threads import run_off_hub, spawn
from app.errors import APIError, ModelLoadFailed, Overloaded
from app.models import loading, progress
from app.models.loaded import LoadedModel, ModelProfile
from app.models.resolution import ModelSpec

log = logging.getLogger(__name__)


Loader = Callable[[ModelSpec, Settings, ModelProfile | None], LoadedModel]

# How often a retiring copy is checked for the end of its work, and a closed one for the
# exit of its thread (seconds).
_RETIRE_POLL_SECONDS = 0.1
_EXIT_POLL_SECONDS = 0.01


def copy_key(spec: ModelSpec) -> str:
    """What one copy in memory stands for: a local model's real folder, or a hub id.

    Two ids that name one folder (links placed in the model root by the operator) are
    one model, and must share one copy.
    """
    return os.path.realpath(spec.source) if spec.local else f"hub:{spec.source}"


class _Slot:
    """A cache entry: a model, or a load in progress that others can wait for."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec_id = spec.model_id
        self.ready = threading.Event()
        self.model: LoadedModel | None = None
        self.error: APIError | None = None


class ModelCache:
    """An LRU of loaded models, guarded by one lock, and at most one copy of each in memory.

    Concurrent first requests for a model share one load; a load runs off the
    gevent hub and never holds the lock, so other models keep serving. A failed
    load is forgotten, so the next request tries again.

    A model taken out of the LRU (evicted, unloaded, idle too long) keeps its weights
    while its worker finishes the work it has accepted: it is *retiring*. It stays
    listed by `loaded()` (so GET /models and the gauges count every copy in memory),
    and a request for it in the meantime takes it back into the LRU instead of loading
    a second copy beside it (omlx #1938). Once idle it is closed, and it leaves the
    listing when its thread has exited and freed the weights; a load of the same model
    waits for that exit.
    """

    def __init__(self, loader: Loader) -> None:
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # by copy_key, LRU first
        self._retiring: dict[str, LoadedModel] = {}  # by copy_key: out of the LRU, in memory
        self.settings = Settings()
        self.loads_started = 0
        self.loader = loader  # replaceable: tests wrap it to count or slow down loads
        self.on_load: Callable[[LoadedModel], None] | None = None  # e.g. record metrics

    def configure(self, settings: Settings) -> None:
        """Adopt the app's settings (capacity, device, dtype, queue size)."""
        self.settings = settings

    def get(self, spec: ModelSpec, timeout: float | None = None) -> LoadedModel:
        """Return the model, loading it if needed; waits at most `timeout` seconds."""
        slot = self.begin(spec)
        if not slot.ready.wait(timeout):
            raise TimeoutError
        if slot.error is not None:
            raise slot.error
        assert slot.model is not None
        slot.model.last_used = time.time()
        return slot.model

    def peek(self, spec: ModelSpec) -> LoadedModel | None:
        """The model if it is already in memory, without loading it."""
        with self._lock:
            slot = self._slots.get(copy_key(spec))
        return slot.model if slot is not None else None

    def begin(self, spec: ModelSpec, profile: ModelProfile | None = None) -> _Slot:
        """Start loading `spec` unless it is loaded or loading; return its slot.

        A `profile` the caller has already loaded is reused by the load. A retiring copy
        that still takes work is taken back instead of loading another.
        """
        key = copy_key(spec)
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)
                return slot
            slot = self._slots[key] = _Slot(spec)
            revived = self._retiring.get(key)
            if revived is not None and not revived.closing:
                del self._retiring[key]
                revived.retiring = False
                slot.model = revived
                slot.ready.set()
                evicted = self._evict_over_capacity()
            else:
                self.loads_started += 1
        if slot.model is not None:
            log.info("model %s was still in memory: serving it again", spec.model_id)
            self._let_go(evicted)
            return slot
        # A greenlet, not threading.Thread: under gevent, Thread.start takes threading's
        # module lock, which transformers' loading threads also take (see
        # threads.native_logging_locks for why a lock shared with them can hang us).
        spawn(self._load, spec, slot, profile)
        return slot

    def loaded(self) -> list[LoadedModel]:
        """Every copy in memory: the LRU's, least recently used first, then retiring ones."""
        with self._lock:
            serving = [slot.model for slot in self._slots.values() if slot.model is not None]
            return serving + list(self._retiring.values())

    def loading(self) -> list[str]:
        """Ids of the models being loaded right now."""
        with self._lock:
            return [slot.spec_id for slot in self._slots.values() if not slot.ready.is_set()]

    def clear(self, cancel: bool = False, timeout: float = 0.0) -> None:
        """Unload everything; with `cancel`, abandon running work. Waits up to `timeout`."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
            retiring, self._retiring = list(self._retiring.values()), {}
            self.loads_started = 0
        for lm in retiring:
            lm.closing = True
        workers = [slot.model.worker for slot in slots if slot.model is not None]
        workers += [lm.worker for lm in retiring]
        for worker in workers:
            worker.close(cancel=cancel)
        for worker in workers if timeout > 0 else ():
            if not worker.join(timeout):
                log.warning("a model thread did not stop within %.1fs", timeout)

    def unload(self, spec: ModelSpec) -> LoadedModel | None:
        """Take a model out of the cache; it finishes its accepted work, then frees its memory.

        Until then it is listed as retiring, and a request for it takes it back.
        """
        key = copy_key(spec)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.model is None:
                return None
            self._take_out(key)
        self._let_go([slot.model])
        return slot.model

    def unload_idle(self, ttl: float) -> list[LoadedModel]:
        """Unload models that have done nothing for `ttl` seconds."""
        now = time.time()
        with self._lock:
            idle = [
                (key, slot.model)
                for key, slot in self._slots.items()
                if slot.model is not None and slot.model.idle_since(now) > ttl
            ]
            for key, _ in idle:
                self._take_out(key)
        for _, lm in idle:
            log.info(
                "unloading model %s: idle for over %.0fs (LLMVIZ_MODEL_TTL)", lm.spec.model_id, ttl
            )
        self._let_go([lm for _, lm in idle])
        return [lm for _, lm in idle]

    def drain(self, reason: str) -> None:
        """End every running and queued generation (server shutdown)."""
        for lm in self.loaded():
            lm.worker.cancel_all(reason)

    def shutdown(self) -> None:
        """Stop every model thread before the process exits.

        An interpreter that exits while a native thread is inside torch aborts
        ("terminate called without an active exception"), so cancel and wait.
        """
        self.clear(cancel=True, timeout=10.0)

    def _load(self, spec: ModelSpec, slot: _Slot, profile: ModelProfile | None) -> None:
        key = copy_key(spec)
        try:
            self._await_exit(key)  # a closing copy frees its weights before these load
            progress.start(spec)
            model = run_off_hub(self.loader, spec, self.settings, profile)
        except APIError as exc:
            # Without its traceback: that holds the loader's frames, and with them any
            # weights loaded before the failure, for as long as waiters keep the error.
            slot.error = exc.with_traceback(None)
        except Exception as exc:  # keep the waiting requests informed, whatever happened
            log.exception("loading %s failed", spec.model_id)
            slot.error = ModelLoadFailed(f"loading model {spec.model_id!r} failed: {exc}")
        else:
            slot.model = model
            self._observe(model)
        progress.finish(spec)
        with self._lock:
            cleared = self._slots.get(key) is not slot  # by clear(), while this loaded
            if slot.error is not None and not cleared:
                del self._slots[key]
            evicted = self._evict_over_capacity()
        if cleared and slot.model is not None:
            slot.model.worker.close()  # unlisted, nothing else would ever free it
        self._let_go(evicted)  # an idle evicted copy is freed before this one is used
        slot.ready.set()

    def _observe(self, lm: LoadedModel) -> None:
        # A hook's failure (metrics) is not the model's: it is loaded and must stay listed.
        if self.on_load is None:
            return
        try:
            self.on_load(lm)
        except Exception:
            log.exception("the on_load hook failed for %s", lm.model_id)

    def _evict_over_capacity(self) -> list[LoadedModel]:
        loaded = [(key, s.model) for key, s in self._slots.items() if s.model is not None]
        excess = len(loaded) - self.settings.cache_size
        return [self._take_out(key) for key, _ in loaded[: max(excess, 0)]]

    def _take_out(self, key: str) -> LoadedModel:
        """Move a loaded model from the LRU to the retiring copies; call under the lock.

        One step, so that no listing misses it; an idle one is closed at once, so no
        request can take back a copy that was meant to be freed.
        """
        lm = self._slots.pop(key).model
        assert lm is not None
        log.info("model %s leaves the cache; it is freed once its work ends", lm.model_id)
        lm.retiring = True
        self._retiring[key] = lm
        self._close_if_idle(lm)
        return lm

    def _let_go(self, models: list[LoadedModel]) -> None:
        """After `_take_out`: wait for idle copies to free their weights; watch busy ones."""
        for lm in models:
            if lm.closing:
                self._close_when_idle(lm)
            else:
                spawn(self._close_when_idle, lm)

    def _close_when_idle(self, lm: LoadedModel) -> None:
        """Close a retiring copy once it is idle, and forget it once its thread has exited."""
        key = copy_key(lm.spec)
        while True:
            with self._lock:
                if self._retiring.get(key) is not lm:
                    return  # taken back into the LRU, or cleared
                if self._close_if_idle(lm):
                    break
            time.sleep(_RETIRE_POLL_SECONDS)
        while not lm.worker.join(0):  # a native lock: polled, never waited on from the hub
            time.sleep(_EXIT_POLL_SECONDS)
        with self._lock:
            if self._retiring.get(key) is lm:
                del self._retiring[key]

    @staticmethod
    def _close_if_idle(lm: LoadedModel) -> bool:
        """Close `lm` if it has no work; True once it is closing. Call under the lock:
        `begin` must not take back a copy that is closing."""
        if not lm.closing:
            stats = lm.stats()
            if stats["active"] or stats["queued"]:
                return False
            lm.closing = True
            lm.worker.close()
        return True

    def _await_exit(self, key: str) -> None:
        """Wait (off the hub) until a closing copy of `key` has exited."""
        with self._lock:
            old = self._retiring.get(key)
        while old is not None and not old.worker.join(0):
            time.sleep(_EXIT_POLL_SECONDS)


def submit(lm: LoadedModel, work: GenerationJob | ModelTask) -> None:
    """Hand work to the model's thread; if it was unloaded a moment ago, load it again.

    Raises QueueFull (from the engine) when the model's queue is full.
    """
    for _ in range(3):
        try:
            lm.enqueue(work)
            return
        except WorkerClosed:  # evicted between lookup and submit
            lm = cache.get(lm.spec)
    # Evicted each time: the cache is thrashing between models. A retry helps once a load
    # has had time to finish, so ask for about one load's time.
    wait = max(1, math.ceil(lm.load_seconds))
    raise Overloaded("the model is being reloaded; retry shortly", retry_after=wait)


cache = ModelCache(loading.load)
atexit.register(cache.shutdown)
