"""/inspect against transformers: attention, the logit lens, next-token candidates, norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from app.engine import tensors
from tests.support.tiny_models import MODEL_IDS

EVERYTHING = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


def _inspect(client, **body):
    response = client.post("/inspect", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _model(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_attention_is_causal_normalized_and_matches_transformers(client, model_root, model_id):
    prompt = "The quick brown fox 🦊 jumps"
    body = _inspect(
        client, model_id=model_id, prompt=prompt, include=EVERYTHING, attention={"format": "dense"}
    )
    weights = tensors.decode(body["attention"]["weights"]).astype(np.float32)
    ids = body["token_ids"]
    assert weights.shape[0] == 2 and weights.shape[2:] == (len(ids), len(ids))
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=2e-3)
    assert np.all(np.triu(weights, k=1) == 0)
    with torch.inference_mode():
        expected = _model(model_root, model_id)(torch.tensor([ids]), output_attentions=True)
    expected = torch.stack([a[0] for a in expected.attentions]).numpy()
    np.testing.assert_allclose(weights, expected, atol=1e-3)


def test_topk_attention_keeps_the_largest_weights(client):
    dense = _inspect(
        client,
        model_id="tiny-llama",
        prompt="one two three four five six",
        include=["attention"],
        attention={"format": "dense"},
    )
    top = _inspect(
        client,
        model_id="tiny-llama",
        prompt="one two three four five six",
        include=["attention"],
        attention={"format": "topk", "k": 3, "heads": [1, 3]},
    )
    full = tensors.decode(dense["attention"]["weights"])[:, [1, 3]]
    weights = tensors.decode(top["attention"]["weights"])
    keys = tensors.decode(top["attention"]["indices"])
    assert weights.shape == keys.shape == full.shape[:3] + (3,)
    assert keys[0, 0, 0, 1] == -1 and weights[0, 0, 0, 1] == 0  # row 0 has a single key
    for layer, head, row in np.ndindex(*full.shape[:3]):
        valid = keys[layer, head, row] >= 0
        picked = full[layer, head, row][keys[layer, head, row][valid]]
        np.testing.assert_allclose(picked, weights[layer, head, row][valid], atol=1e-3)
        assert picked.min() >= np.sort(full[layer, head, row])[-valid.sum()] - 1e-3


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_last_layer_lens_is_the_real_next_token_distribution(client, model_root, model_id):
    body = _inspect(
        client,
        model_id=model_id,
        prompt="Once upon a time there",
        include=["next_token", "logit_lens"],
        top_k=5,
    )
    lens_ids = tensors.decode(body["logit_lens"]["ids"])
    lens_probs = tensors.decode(body["logit_lens"]["probs"]).astype(np.float32)
    ids = body["token_ids"]
    with torch.inference_mode():
        probs = _model(model_root, model_id)(torch.tensor([ids])).logits[0].softmax(-1)
    top_probs, top_ids = probs.topk(5)
    assert body["layers"] == [0, 1]
    np.testing.assert_array_equal(lens_ids[-1][:, 0], top_ids[:, 0].numpy())
    np.testing.assert_allclose(lens_probs[-1], top_probs.numpy(), atol=1e-3)
    np.testing.assert_array_equal(tensors.decode(body["next_token"]["ids"]), top_ids.numpy())
    ranks = tensors.decode(body["logit_lens"]["next_token_rank"])
    assert ranks[-1][-1] == -1  # no next token after the last position
    expected_rank = (probs[:-1] > probs[:-1].gather(1, torch.tensor(ids[1:])[:, None])).sum(-1)
    np.testing.assert_array_equal(ranks[-1][:-1], expected_rank.numpy())


def test_next_token_mass_and_entropy(client, model_root):
    body = _inspect(
        client, model_id="tiny-gpt2", prompt="Hello there", include=["next_token"], top_k=4
    )
    probs = tensors.decode(body["next_token"]["probs"]).astype(np.float32)
    other = tensors.decode(body["next_token"]["other_prob"])
    np.testing.assert_allclose(probs.sum(-1) + other, 1.0, atol=2e-3)
    assert np.all(np.diff(probs, axis=-1) <= 0)
    entropy = tensors.decode(body["next_token"]["entropy"])
    assert np.all(entropy > 0) and np.all(entropy <= np.log(400) + 1e-3)
    candidate_ids = tensors.decode(body["next_token"]["ids"]).flatten()
    assert {str(i) for i in candidate_ids} <= set(body["token_text"])


def test_resid_norms_and_token_ids_input(client):
    ids = client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "Hi 🦙 there"})
    ids = ids.get_json()["token_ids"]
    body = _inspect(
        client, model_id="tiny-llama", token_ids=ids, include=["tokens", "resid_norms"], layers=[1]
    )
    norms = tensors.decode(body["resid_norms"]["output"])
    assert norms.shape == (1, len(ids)) and np.all(norms > 0)
    assert tensors.decode(body["resid_norms"]["input"]).shape == (1, len(ids))
    assert [t["id"] for t in body["tokens"]] == ids
    assert "".join(t["text"] for t in body["tokens"]) == "<s>Hi 🦙 there"  # no added space
