"""Model resolution and the LRU model cache."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from app import create_app, models
from app.config import Settings
from app.errors import BadRequest, ModelNotFound


@pytest.mark.parametrize(
    "model_id", ["../x", "/etc/passwd", "a/../b", "./x", "a\\b", "x/..", "..", "a\x00b"]
)
def test_resolve_refuses_paths_that_leave_the_root(tmp_path, model_id):
    with pytest.raises(BadRequest):
        models.resolve(model_id, Settings(model_root=tmp_path))


def test_resolve_prefers_a_local_folder(model_root):
    spec = models.resolve("tiny-gpt2", Settings(model_root=model_root))
    assert spec.local and spec.source == str(model_root / "tiny-gpt2")


def test_resolve_owner_slash_name_folder(tmp_path):
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert models.resolve("org/name", Settings(model_root=tmp_path)).local


def test_resolve_treats_other_ids_as_hub_ids(tmp_path):
    spec = models.resolve("meta-llama/Llama-3.2-1B-Instruct", Settings(model_root=tmp_path))
    assert not spec.local and spec.source == "meta-llama/Llama-3.2-1B-Instruct"


def test_hub_can_be_turned_off(tmp_path):
    with pytest.raises(ModelNotFound, match="LLMVIZ_ALLOW_HUB=0"):
        models.resolve("gpt2", Settings(model_root=tmp_path, allow_hub=False))


@pytest.mark.parametrize("model_id", ["a/b/c", "-bad", "a--b", "with space"])
def test_invalid_hub_ids_are_not_found(tmp_path, model_id):
    with pytest.raises(ModelNotFound):
        models.resolve(model_id, Settings(model_root=tmp_path))


def test_uncached_hub_model_offline_is_a_clear_404(client):
    response = client.post("/generate", json={"model_id": "gpt2", "prompt": "x"})
    assert response.status_code == 404
    assert "Hugging Face hub" in response.get_json()["error"]


def test_hub_path_loads_from_the_hub_cache_offline(client, model_root):
    """The real hub code path: a repository laid out in HF_HUB_CACHE, as a download leaves it."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--llmviz-test--cached-gpt2"
    snapshot = repo / "snapshots" / ("0" * 40)
    if not snapshot.exists():
        shutil.copytree(model_root / "tiny-gpt2", snapshot)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
    response = client.post(
        "/tokenize", json={"model_id": "llmviz-test/cached-gpt2", "prompt": "Hi"}
    )
    assert response.status_code == 200
    loaded = {m["model_id"]: m for m in client.get("/models").get_json()["loaded"]}
    assert loaded["llmviz-test/cached-gpt2"]["source"] == "hub"


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

    def slow_load(spec, settings):
        if spec.model_id == "tiny-llama":
            assert release.wait(30)
        return real_load(spec, settings)

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
