"""Load progress: the tqdm_class hook huggingface_hub reports through, and the stream's
progress comments while a request waits for its model."""

from __future__ import annotations

import json
import threading

from huggingface_hub.utils.tqdm import _get_progress_bar_context

from app import create_app, models
from app.models import progress
from app.web.serving import loop


def test_a_bar_counts_a_file_as_huggingface_hub_drives_it():
    load = progress.LoadProgress("org/model")
    load.expect({"config.json": 10, "model.safetensors": 1000})
    # huggingface_hub's own way to make a custom tqdm_class (file_download.http_get).
    with _get_progress_bar_context(
        desc="(…)model.safetensors",
        log_level=0,
        total=1000,
        initial=100,
        tqdm_class=load.bar("model.safetensors"),
    ) as bar:
        bar.update(400)
    load.have("config.json", 10)
    shown = load.snapshot()
    assert shown["phase"] == "downloading"
    assert shown["files"] == [
        {"name": "config.json", "done_bytes": 10, "total_bytes": 10},
        {"name": "model.safetensors", "done_bytes": 500, "total_bytes": 1000},
    ]
    assert (shown["done_bytes"], shown["total_bytes"]) == (510, 1010)
    load.loading_weights()
    assert load.snapshot()["phase"] == "loading_weights"


def test_an_unknown_size_makes_the_total_unknown():
    load = progress.LoadProgress("m")
    load.advance("a.bin", 5)
    assert load.snapshot()["total_bytes"] is None


def _waiting_stream(spec, progress_pings: bool, fresh_cache, monkeypatch) -> list[bytes]:
    """What await_model yields while the load of `spec` is held at 'downloading'."""
    release = threading.Event()
    real_load = fresh_cache.loader

    def held_load(spec, settings, profile):
        tracker = progress.of(spec.model_id)
        tracker.expect({"model.safetensors": 100})
        tracker.advance("model.safetensors", 40)
        assert release.wait(30)
        return real_load(spec, settings, profile)

    monkeypatch.setattr(fresh_cache, "loader", held_load)
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.05)
    fresh_cache.begin(spec)
    waiting = loop.await_model(spec, ping_seconds=0.2, progress_pings=progress_pings)
    sent = [next(waiting) for _ in range(3)]
    release.set()
    for _ in waiting:
        pass
    return sent


def test_a_stream_waiting_for_its_model_hears_the_progress(model_root, fresh_cache, monkeypatch):
    spec = models.resolve("tiny-gpt2", create_app({"model_root": model_root}).config["LLMVIZ"])
    sent = _waiting_stream(spec, True, fresh_cache, monkeypatch)
    first = sent[0].decode()
    assert first.startswith(": progress {") and first.endswith("}\n\n")
    shown = json.loads(first[len(": progress ") :])
    assert shown["model_id"] == "tiny-gpt2" and shown["done_bytes"] == 40
    assert sent[1:] == [loop.PING, loop.PING]  # unchanged: a plain ping per ping interval


def test_without_progress_pings_only_pings(model_root, fresh_cache, monkeypatch):
    spec = models.resolve("tiny-gpt2", create_app({"model_root": model_root}).config["LLMVIZ"])
    assert _waiting_stream(spec, False, fresh_cache, monkeypatch) == [loop.PING] * 3
