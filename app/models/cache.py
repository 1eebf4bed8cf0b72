"""The model cache: load each model once, keep the most recently used, unload the rest."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from app.config import Settings
from app.engine import GenerationJob, ModelTask, WorkerClosed
from app.engine.threads import run_off_hub, spawn
from app.errors import APIError, ModelLoadFailed, Overloaded
from app.models import loading
from app.models.loaded import LoadedModel, ModelProfile
from app.models.resolution import ModelSpec

log = logging.getLogger(__name__)


Loader = Callable[[ModelSpec, Settings, ModelProfile | None], LoadedModel]


class _Slot:
    """A cache entry: a model, or a load in progress that others can wait for."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.model: LoadedModel | None = None
        self.error: APIError | None = None


class ModelCache:
    """An LRU of loaded models, guarded by one lock.

    Concurrent first requests for a model share one load; a load runs off the
    gevent hub and never holds the lock, so other models keep serving. A failed
    load is forgotten, so the next request tries again.
    """

    def __init__(self, loader: Loader) -> None:
        self._lock = threading.Lock()
        self._slots: OrderedDict[ModelSpec, _Slot] = OrderedDict()
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
            slot = self._slots.get(spec)
        return slot.model if slot is not None else None

    def begin(self, spec: ModelSpec, profile: ModelProfile | None = None) -> _Slot:
        """Start loading `spec` unless it is loaded or loading; return its slot.

        A `profile` the caller has already loaded is reused by the load.
        """
        with self._lock:
            slot = self._slots.get(spec)
            if slot is not None:
                self._slots.move_to_end(spec)
                return slot
            slot = self._slots[spec] = _Slot()
            self.loads_started += 1
        # A greenlet, not threading.Thread: under gevent, Thread.start takes threading's
        # module lock, which transformers' loading threads also take (see
        # threads.native_logging_locks for why a lock shared with them can hang us).
        spawn(self._load, spec, slot, profile)
        return slot

    def loaded(self) -> list[LoadedModel]:
        """Models in memory, least recently used first."""
        with self._lock:
            return [slot.model for slot in self._slots.values() if slot.model is not None]

    def loading(self) -> list[str]:
        """Ids of the models being loaded right now."""
        with self._lock:
            return [spec.model_id for spec, slot in self._slots.items() if not slot.ready.is_set()]

    def clear(self, cancel: bool = False, timeout: float = 0.0) -> None:
        """Unload everything; with `cancel`, abandon running work. Waits up to `timeout`."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
            self.loads_started = 0
        workers = [slot.model.worker for slot in slots if slot.model is not None]
        for worker in workers:
            worker.close(cancel=cancel)
        for worker in workers if timeout > 0 else ():
            if not worker.join(timeout):
                log.warning("a model thread did not stop within %.1fs", timeout)

    def unload(self, spec: ModelSpec) -> LoadedModel | None:
        """Take a model out of the cache; it finishes its accepted work, then frees its memory."""
        with self._lock:
            slot = self._slots.get(spec)
            if slot is None or slot.model is None:
                return None
            del self._slots[spec]
        slot.model.worker.close()
        return slot.model

    def unload_idle(self, ttl: float) -> list[LoadedModel]:
        """Unload models that have done nothing for `ttl` seconds."""
        now = time.time()
        with self._lock:
            idle = [
                (spec, slot.model)
                for spec, slot in self._slots.items()
                if slot.model is not None and slot.model.idle_since(now) > ttl
            ]
            for spec, _ in idle:
                del self._slots[spec]
        for _, lm in idle:
            log.info(
                "unloading model %s: idle for over %.0fs (LLMVIZ_MODEL_TTL)", lm.spec.model_id, ttl
            )
            lm.worker.close()
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
        try:
            slot.model = run_off_hub(self.loader, spec, self.settings, profile)
            if self.on_load is not None:
                self.on_load(slot.model)
        except APIError as exc:
            slot.error = exc
        except Exception as exc:  # keep the waiting requests informed, whatever happened
            log.exception("loading %s failed", spec.model_id)
            slot.error = ModelLoadFailed(f"loading model {spec.model_id!r} failed: {exc}")
        with self._lock:
            if slot.error is not None:
                self._slots.pop(spec, None)
            evicted = self._evict_over_capacity()
        slot.ready.set()
        for old in evicted:
            log.info("evicting model %s", old.spec.model_id)
            old.worker.close()

    def _evict_over_capacity(self) -> list[LoadedModel]:
        loaded = [(spec, s.model) for spec, s in self._slots.items() if s.model is not None]
        excess = len(loaded) - self.settings.cache_size
        evicted = []
        for spec, model in loaded[: max(excess, 0)]:
            del self._slots[spec]
            evicted.append(model)
        return evicted


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
    raise Overloaded("the model is being reloaded; retry shortly")


cache = ModelCache(loading.load)
atexit.register(cache.shutdown)
