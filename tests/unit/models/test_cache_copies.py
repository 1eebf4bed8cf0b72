"""One copy in memory per model, and every copy accounted for (issue 23, kind 9).

An evicted or unloaded model that still has work keeps its weights until that work
ends; a request for it in the meantime must reuse that copy, not load another beside
it, and the cache's listing (GET /models, the gauges) must show it.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from app import create_app, models
from app.engine import GenerationJob, SamplingParams


def _busy(lm: models.LoadedModel) -> GenerationJob:
    """Queue a generation that runs until cancelled (2,000 tokens, end-of-text ignored)."""
    job = GenerationJob([1, 2, 3], SamplingParams(max_new_tokens=2000, ignore_eos=True))
    models.submit(lm, job)
    return job


def _ids(cache: models.ModelCache) -> list[str]:
    return [lm.model_id for lm in cache.loaded()]


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def one_slot(model_root, fresh_cache):
    """The cache holding one model (LLMVIZ_CACHE_SIZE=1); returns a resolver of ids."""
    settings = create_app({"model_root": model_root, "cache_size": 1}).config["LLMVIZ"]
    return lambda model_id: models.resolve(model_id, settings)


def test_an_evicted_model_still_working_is_reused(one_slot, fresh_cache):
    gpt2 = fresh_cache.get(one_slot("tiny-gpt2"))
    job = _busy(gpt2)
    try:
        fresh_cache.get(one_slot("tiny-llama"))  # evicts tiny-gpt2, which keeps generating
        assert sorted(_ids(fresh_cache)) == ["tiny-gpt2", "tiny-llama"]  # both in memory
        again = fresh_cache.get(one_slot("tiny-gpt2"))
        assert again is gpt2  # the copy still in memory, not a second one
        assert fresh_cache.loads_started == 2
        assert _ids(fresh_cache).count("tiny-gpt2") == 1
    finally:
        job.cancel()
    # tiny-llama, evicted in turn and idle, is freed; tiny-gpt2 serves on.
    _wait(lambda: _ids(fresh_cache) == ["tiny-gpt2"])


def test_an_unloaded_model_still_working_is_listed_and_reused(one_slot, fresh_cache):
    spec = one_slot("tiny-gpt2")
    gpt2 = fresh_cache.get(spec)
    job = _busy(gpt2)
    try:
        assert fresh_cache.unload(spec) is gpt2
        listed = fresh_cache.loaded()
        assert listed == [gpt2] and gpt2.describe()["retiring"] is True
        assert fresh_cache.get(spec) is gpt2 and fresh_cache.loads_started == 1
        assert gpt2.describe()["retiring"] is False
    finally:
        job.cancel()


def test_a_retiring_copy_is_freed_when_its_work_ends(one_slot, fresh_cache):
    gpt2 = fresh_cache.get(one_slot("tiny-gpt2"))
    job = _busy(gpt2)
    fresh_cache.get(one_slot("tiny-llama"))
    assert "tiny-gpt2" in _ids(fresh_cache)
    job.cancel()
    _wait(lambda: _ids(fresh_cache) == ["tiny-llama"])
    assert gpt2.worker.join(5)  # its thread has exited, and with it the weights


def test_a_failing_load_hook_leaves_no_unlisted_copy(one_slot, fresh_cache, monkeypatch):
    def broken_hook(lm):
        raise RuntimeError("metrics are down")

    monkeypatch.setattr(fresh_cache, "on_load", broken_hook)
    lm = fresh_cache.get(one_slot("tiny-gpt2"))  # a hook's failure is not the model's
    assert fresh_cache.loaded() == [lm]


def test_links_to_one_folder_share_one_copy(tmp_path, model_root, fresh_cache):
    root = tmp_path / "root"
    root.mkdir()
    for name in ("current", "stable"):  # links out of the root, as an operator may place them
        os.symlink(model_root / "tiny-gpt2", root / name)
    settings = create_app({"model_root": root}).config["LLMVIZ"]
    first = fresh_cache.get(models.resolve("current", settings))
    second = fresh_cache.get(models.resolve("stable", settings))
    assert second is first and fresh_cache.loads_started == 1
    assert len(fresh_cache.loaded()) == 1


def test_a_load_that_ends_after_clear_leaves_no_thread(one_slot, fresh_cache, monkeypatch):
    release = threading.Event()
    real_load = fresh_cache.loader

    def held_load(spec, settings, profile):
        assert release.wait(30)
        return real_load(spec, settings, profile)

    monkeypatch.setattr(fresh_cache, "loader", held_load)
    slot = fresh_cache.begin(one_slot("tiny-gpt2"))
    fresh_cache.clear()  # e.g. shutdown, while the weights load
    release.set()
    assert slot.ready.wait(30) and slot.model is not None
    assert slot.model.worker.join(5)  # closed: its thread and weights are gone
    assert fresh_cache.loaded() == []


def test_a_model_evicted_at_every_hand_over_asks_for_about_one_load_s_wait(monkeypatch):
    """Three evictions in a row between lookup and submit: 503 with Retry-After of one load."""
    import importlib
    from types import SimpleNamespace

    from app.engine import WorkerClosed
    from app.errors import Overloaded

    cache_module = importlib.import_module("app.models.cache")  # the module, not its `cache`

    def closed(work):
        raise WorkerClosed("evicted")

    copy = SimpleNamespace(enqueue=closed, load_seconds=3.2, spec=None)
    monkeypatch.setattr(cache_module.cache, "get", lambda spec: copy)
    with pytest.raises(Overloaded) as refused:
        cache_module.submit(copy, object())
    assert refused.value.headers["Retry-After"] == "4"
