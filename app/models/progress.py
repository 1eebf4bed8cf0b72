"""How far a model's load has come: bytes per file while it downloads, then its weights.

A load registers a `LoadProgress` under its model id; GET /models and the stream's
pings read `snapshot()`s of it while the load runs. huggingface_hub reports each
file's bytes through its public `tqdm_class` hook (`hf_hub_download(...,
tqdm_class=...)`): `LoadProgress.bar(filename)` makes such a class for one file.
"""

from __future__ import annotations

from typing import Any, Literal

from app.engine.threads import native_lock
from app.models.resolution import ModelSpec

Phase = Literal["starting", "downloading", "loading_weights"]


class LoadProgress:
    """One load's progress; updated from the loading thread, read from request handlers."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        # Real locks: written from a loading thread, read from the hub's greenlets.
        self._lock = native_lock()
        self._phase: Phase = "starting"
        self._files: dict[str, list[int | None]] = {}  # name -> [done bytes, total or None]

    def expect(self, sizes: dict[str, int | None]) -> None:
        """The files about to be downloaded, with their sizes in bytes when known."""
        with self._lock:
            self._phase = "downloading"
            for name, size in sizes.items():
                self._files.setdefault(name, [0, size])

    def advance(self, name: str, done: int, total: int | None = None) -> None:
        """`done` more bytes of `name` arrived; `total` is its size, once known."""
        with self._lock:
            entry = self._files.setdefault(name, [0, None])
            entry[0] = max(0, (entry[0] or 0) + done)
            if total is not None:
                entry[1] = total

    def have(self, name: str, size: int) -> None:
        """`name` is in the local cache, all `size` bytes of it."""
        with self._lock:
            self._files[name] = [size, size]

    def loading_weights(self) -> None:
        """The files are here; the weights are being read into memory."""
        with self._lock:
            self._phase = "loading_weights"

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: `model_id`, `phase` ("starting", "downloading", "loading_weights"),
        `files` (`name`, `done_bytes`, `total_bytes` or null), and their sums
        `done_bytes`, `total_bytes` (null while a file's size is unknown)."""
        with self._lock:
            files = [
                {"name": name, "done_bytes": done, "total_bytes": total}
                for name, (done, total) in self._files.items()
            ]
            phase = self._phase
        totals = [f["total_bytes"] for f in files]
        return {
            "model_id": self.model_id,
            "phase": phase,
            "done_bytes": sum(f["done_bytes"] or 0 for f in files),
            "total_bytes": None if None in totals else sum(t or 0 for t in totals),
            "files": files,
        }

    def bar(self, name: str) -> type:
        """A `tqdm_class` for huggingface_hub's download of `name`, counting into this."""
        progress = self

        class _Bar:
            # The subset of tqdm that huggingface_hub's http_get uses on a custom class:
            # made with desc/total/initial/unit keywords, used as a context manager, update(n).
            def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **_: Any):
                progress.advance(name, initial, total)

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: int | float | None = 1) -> None:
                progress.advance(name, int(n or 0))

            def close(self) -> None:
                return None

        return _Bar


_lock = native_lock()
_running: dict[str, LoadProgress] = {}


def start(spec: ModelSpec) -> LoadProgress:
    """Register the progress of a load of `spec` that begins now."""
    progress = LoadProgress(spec.model_id)
    with _lock:
        _running[spec.model_id] = progress
    return progress


def finish(spec: ModelSpec) -> None:
    """The load of `spec` ended (loaded or failed)."""
    with _lock:
        _running.pop(spec.model_id, None)


def of(model_id: str) -> LoadProgress | None:
    """The running load's progress for `model_id`, if one is running."""
    with _lock:
        return _running.get(model_id)


def running() -> list[dict[str, Any]]:
    """Snapshots of every load in progress."""
    with _lock:
        loads = list(_running.values())
    return [progress.snapshot() for progress in loads]
