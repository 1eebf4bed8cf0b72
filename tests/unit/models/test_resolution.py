"""Model resolution: folders under the root, hub ids, unsafe ids, the allowlist."""

from __future__ import annotations

import fnmatch
import shutil

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


# Canonicalising a name before an authorisation check (DesktopCommanderMCP PR #595): the
# allowlist holds what the operator wrote, so it is checked against the id the client sent,
# not against the folder a symlink in the model root leads to.


@pytest.fixture
def aliased_root(tmp_path, model_root):
    """A model root holding the folder `gpt2-tiny` and `current`, a symlink to it."""
    root = tmp_path / "root"
    shutil.copytree(model_root / "tiny-gpt2", root / "gpt2-tiny")
    (root / "current").symlink_to("gpt2-tiny", target_is_directory=True)
    return root


def _client(root, allowlist):
    return create_app({"model_root": root, "model_allowlist": allowlist}).test_client()


def test_an_allowed_alias_is_served(aliased_root):
    """DesktopCommanderMCP PR #595: an allowed symlink's id got 403 naming its target."""
    client = _client(aliased_root, ("current",))
    answer = client.post("/tokenize", json={"model_id": "current", "prompt": "x"})
    assert answer.status_code == 200, answer.get_json()
    refused = client.post("/tokenize", json={"model_id": "gpt2-tiny", "prompt": "x"})
    assert refused.status_code == 403  # the operator allowed the alias, not every name


def test_a_refusal_names_the_id_the_client_sent(aliased_root):
    """DesktopCommanderMCP PR #595: the 403 named 'gpt2-tiny', which the client never sent."""
    refused = _client(aliased_root, ("other",)).post(
        "/tokenize", json={"model_id": "current", "prompt": "x"}
    )
    assert refused.status_code == 403
    message = refused.get_json()["error"]
    assert "'current'" in message and "gpt2-tiny" not in message


@pytest.mark.parametrize("allowlist", [("current",), ("gpt2-tiny",), ("*",)])
def test_the_model_lists_offer_exactly_what_the_allowlist_lets_through(aliased_root, allowlist):
    """DesktopCommanderMCP PR #595: /models and /v1/models agree with the check they offer."""
    client = _client(aliased_root, allowlist)
    available = client.get("/models").get_json()["available"]
    listed = [model["id"] for model in client.get("/v1/models").get_json()["data"]]
    local = {"current", "gpt2-tiny"}
    expected = {m for m in local if any(fnmatch.fnmatchcase(m, p) for p in allowlist)}
    assert set(available) & local == expected
    assert set(listed) & local == expected
    for model_id in expected:
        answer = client.post("/tokenize", json={"model_id": model_id, "prompt": "x"})
        assert answer.status_code == 200, (model_id, answer.get_json())
        assert client.get(f"/v1/models/{model_id}").get_json()["id"] == model_id


def test_an_alias_still_loads_its_folder_once(aliased_root):
    """The alias is checked by its own name, but is still one model with its target."""
    settings = Settings(model_root=aliased_root, model_allowlist=("current", "gpt2-tiny"))
    assert models.resolve("current", settings).model_id == "gpt2-tiny"
    assert models.resolve("current/", settings).source == str(aliased_root / "gpt2-tiny")


def test_a_link_cannot_be_spelled_out_of_the_root(aliased_root):
    """Path safety is unchanged: ".." through an alias is refused before any file is read."""
    settings = Settings(model_root=aliased_root, model_allowlist=("current*",))
    for model_id in ("current/..", "current/../gpt2-tiny", "current/../../etc"):
        with pytest.raises(BadRequest):
            models.resolve(model_id, settings)


def test_unloading_an_alias_that_is_not_loaded_names_the_alias(aliased_root):
    """DesktopCommanderMCP PR #595's kind: errors name the id the client sent, not its target."""
    answer = _client(aliased_root, ()).delete("/models/current")
    assert answer.status_code == 404
    assert answer.get_json()["error"] == "model 'current' is not loaded"
