"""Model resolution: folders under the root, hub ids, unsafe ids, the allowlist."""

from __future__ import annotations

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


def test_model_allowlist(model_root):
    client = create_app({"model_root": model_root, "model_allowlist": ("tiny-*",)}).test_client()
    assert (
        client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "x"}).status_code == 200
    )
    refused = client.post("/tokenize", json={"model_id": "slow-gpt2", "prompt": "x"})
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "model_not_allowed"
    assert client.post("/generate", json={"model_id": "gpt2", "prompt": "x"}).status_code == 403
