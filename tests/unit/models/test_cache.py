"""The LRU model cache: one load per model, eviction, failed loads, loads in parallel."""

from __future__ import annotations

import json
import shutil
import threading

from app import create_app, models


def test_concurrent_first_requests_load_once(app, fresh_cache, monkeypatch):
    calls = []
    real_load = fresh_cache.loader
    monkeypatch.setattr(fresh_cache, "loader", lambda *a: calls.append(a) or real_load(*a))
    spec = models.resolve("tiny-llama", app.config["LLMVIZ"])
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(fresh_cache.get(spec))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(calls) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_lru_evicts_the_least_recently_used(model_root, fresh_cache):
    client = create_app({"model_root": model_root, "cache_size": 2}).test_client()
    for name in ("tiny-gpt2", "tiny-llama", "tiny-gpt2", "slow-gpt2"):
        assert client.post("/tokenize", json={"model_id": name, "prompt": "x"}).status_code == 200
    loaded = [m["model_id"] for m in client.get("/models").get_json()["loaded"]]
    assert loaded == ["tiny-gpt2", "slow-gpt2"]  # tiny-llama was least recently used
    assert fresh_cache.loads_started == 3


def test_evicted_model_finishes_its_work_and_reloads(model_root, fresh_cache):
    client = create_app({"model_root": model_root, "cache_size": 1}).test_client()
    generate = {"model_id": "tiny-gpt2", "prompt": "x", "max_new_tokens": 3}
    assert client.post("/generate", json=generate).status_code == 200
    assert (
        client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "x"}).status_code == 200
    )
    assert client.post("/generate", json=generate).status_code == 200
    assert fresh_cache.loads_started == 3


def test_failed_load_is_not_cached(tmp_path, model_root, fresh_cache):
    broken = tmp_path / "flaky"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    client = create_app({"model_root": tmp_path}).test_client()
    request = {"model_id": "flaky", "prompt": "Hi"}
    first = client.post("/tokenize", json=request)
    second = client.post("/tokenize", json=request)
    assert first.status_code == second.status_code
    assert first.status_code in (400, 404)
    assert first.get_json() == second.get_json()
    shutil.rmtree(broken)
    shutil.copytree(model_root / "tiny-gpt2", broken)
    assert client.post("/tokenize", json=request).status_code == 200


def test_loading_one_model_does_not_block_another(app, fresh_cache, monkeypatch):
    client = app.test_client()
    assert (
        client.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": "x"}).status_code == 200
    )
    release = threading.Event()
    real_load = fresh_cache.loader

    def slow_load(spec, settings, profile):
        if spec.model_id == "tiny-llama":
            assert release.wait(30)
        return real_load(spec, settings, profile)

    monkeypatch.setattr(fresh_cache, "loader", slow_load)
    spec = models.resolve("tiny-llama", app.config["LLMVIZ"])
    slot = fresh_cache.begin(spec)
    try:
        response = client.post("/generate", json={"model_id": "tiny-gpt2", "prompt": "x"})
        assert response.status_code == 200
        assert not slot.ready.is_set()  # tiny-llama was still loading all along
    finally:
        release.set()
    assert slot.ready.wait(30) and slot.model is not None
