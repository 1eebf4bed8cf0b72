"""Loading from the Hugging Face hub cache offline, and the error when a model is not there."""

from __future__ import annotations

import shutil
from pathlib import Path


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
