"""Visualization data: architecture configs, /inspect, and live attention while streaming."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from app import create_app
from app.engine import tensors
from tests.conftest import MODEL_IDS
from tests.sse_client import parse

EVERYTHING = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


@pytest.fixture(scope="module")
def config_only_root(tmp_path_factory, model_root):
    """Configs without weights: GPT-2 small, a GQA Llama under an owner/name folder."""
    root = tmp_path_factory.mktemp("configs")
    GPT2Config().save_pretrained(root / "gpt2-small")
    LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ).save_pretrained(root / "TinyLlama" / "TinyLlama-1.1B-shape")
    return root


@pytest.fixture
def config_client(config_only_root):
    return create_app({"model_root": config_only_root}).test_client()


def _inspect(client, **body):
    response = client.post("/inspect", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _model(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    model.set_attn_implementation("eager")
    return model


# -- config --


def test_gpt2_small_config_without_weights(config_client):
    body = config_client.get("/models/gpt2-small/config").get_json()
    assert body["n_params"] == 124_439_808
    assert body["family"] == "gpt2"
    assert (body["n_layers"], body["d_model"], body["n_heads"], body["d_head"]) == (12, 768, 12, 64)
    assert body["n_kv_heads"] == 12 and body["d_mlp"] == 3072
    assert body["mlp_type"] == "standard" and body["norm_type"] == "layernorm"
    assert body["positional"] == "learned" and body["tie_word_embeddings"] is True
    assert body["llmviz_shape"] == {
        "B": 1,
        "T": 1024,
        "C": 768,
        "nHeads": 12,
        "A": 64,
        "nBlocks": 12,
        "vocabSize": 50257,
    }
    assert body["raw_config"]["model_type"] == "gpt2"
    assert "dtype" not in body  # not loaded


@pytest.mark.parametrize(
    "path",
    [
        "/models/TinyLlama/TinyLlama-1.1B-shape/config",
        "/models/config?model_id=TinyLlama/TinyLlama-1.1B-shape",
    ],
)
def test_llama_config_with_a_slash_in_its_id(config_client, path):
    body = config_client.get(path).get_json()
    assert body["model_id"] == "TinyLlama/TinyLlama-1.1B-shape"
    assert body["n_heads"] == 32 and body["n_kv_heads"] == 4  # grouped-query attention
    assert body["mlp_type"] == "gated" and body["d_mlp"] == 5632
    assert body["norm_type"] == "rmsnorm" and body["positional"] == "rotary"
    assert body["act_fn"] == "silu"
    assert body["n_params"] == 1_100_048_384  # TinyLlama-1.1B's published size


def test_loaded_model_config_has_dtype_and_device(client):
    client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "x"})
    body = client.get("/models/tiny-llama/config").get_json()
    assert body["dtype"] == "float32" and body["device"] == "cpu"
    assert body["n_kv_heads"] == 2


def test_config_errors(client):
    assert client.get("/models/nobody/nothing/config").status_code == 404
    assert client.get("/models/config?model_id=../etc").status_code == 400


def test_models_lists_loaded_and_available(client):
    client.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": "x"})
    body = client.get("/models").get_json()
    assert {"tiny-gpt2", "tiny-llama", "slow-gpt2"} <= set(body["available"])
    loaded = {m["model_id"]: m for m in body["loaded"]}["tiny-gpt2"]
    assert loaded["device"] == "cpu" and loaded["dtype"] == "float32"
    assert loaded["memory_bytes"] > 0


# -- inspect --


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
    assert "".join(t["text"] for t in body["tokens"]) == "<s> Hi 🦙 there"


def test_inspect_limits_are_413(model_root):
    small = create_app(
        {"model_root": model_root, "max_inspect_tokens": 16, "max_inspect_bytes": 20_000}
    ).test_client()
    too_long = small.post("/inspect", json={"model_id": "tiny-gpt2", "prompt": "word " * 40})
    assert too_long.status_code == 413
    assert "LLMVIZ_MAX_INSPECT_TOKENS" in too_long.get_json()["error"]
    too_big = small.post(
        "/inspect",
        json={
            "model_id": "tiny-gpt2",
            "prompt": "a b c d e f g",
            "include": ["attention"],
            "attention": {"format": "dense"},
        },
    )
    assert too_big.status_code == 200  # 2 layers x 4 heads x 13 x 13 is small
    too_big = small.post(
        "/inspect",
        json={
            "model_id": "tiny-gpt2",
            "prompt": "a b c d e f g",
            "include": EVERYTHING,
            "top_k": 100,
        },
    )
    assert too_big.status_code == 413
    assert "LLMVIZ_MAX_INSPECT_BYTES" in too_big.get_json()["error"]


@pytest.mark.parametrize(
    "extra",
    [
        {"layers": [2]},
        {"layers": [-1]},
        {"layers": []},
        {"include": ["everything"]},
        {"include": []},
        {"top_k": 0},
        {"top_k": 101},
        {"attention": {"format": "sparse"}},
        {"attention": {"heads": [4]}},
        {"attention": {"k": 0}},
        {"token_ids": [1, 2]},  # and a prompt
        {"prompt": None},
        {"prompt": None, "token_ids": [10**6]},
    ],
)
def test_bad_inspect_requests_are_400(client, extra):
    body = {"model_id": "tiny-llama", "prompt": "x", "include": ["attention"], **extra}
    response = client.post("/inspect", json=body)
    assert response.status_code == 400, response.get_json()


# -- live attention --


def test_streamed_attention_rows_match_a_full_inspection(server):
    body = {"model_id": "tiny-llama", "prompt": "Attention please", "max_new_tokens": 6}
    body.update(temperature=0, ignore_eos=True, details=True, attention="last_row", heads=[0, 3])
    events = parse(requests.post(server.url("/generate/stream"), json=body, timeout=60).text)
    tokens = [json.loads(e.data) for e in events if getattr(e, "event", "") == "token"]
    prompt_ids = requests.post(server.url("/tokenize"), json=body, timeout=30).json()["token_ids"]
    sequence = prompt_ids + [t["id"] for t in tokens]
    full = requests.post(
        server.url("/inspect"),
        timeout=60,
        json={
            "model_id": "tiny-llama",
            "token_ids": sequence,
            "include": ["attention"],
            "attention": {"format": "dense", "heads": [0, 3]},
        },
    ).json()
    dense = tensors.decode(full["attention"]["weights"]).astype(np.float32)
    for i, token in enumerate(tokens):
        row = tensors.decode(token["attention"]).astype(np.float32)  # [layers, heads, keys]
        position = len(prompt_ids) + i - 1  # the position that predicted token i
        assert row.shape == (2, 2, position + 1)
        np.testing.assert_allclose(row, dense[:, :, position, : position + 1], atol=2e-3)


def test_inspection_and_generation_do_not_interfere(server):
    body = {"model_id": "slow-gpt2", "prompt": "Side by side", "max_new_tokens": 300}
    body.update(temperature=0, ignore_eos=True)
    expected = requests.post(server.url("/generate"), json=body, timeout=120).json()["text"]
    inspect_body = {"model_id": "slow-gpt2", "prompt": "Inspect me " * 20, "include": EVERYTHING}
    alone = requests.post(server.url("/inspect"), json=inspect_body, timeout=120).json()
    results = {}
    stream = threading.Thread(
        target=lambda: results.update(
            text="".join(
                e.data
                for e in parse(
                    requests.post(server.url("/generate/stream"), json=body, timeout=120).text
                )
            )
        )
    )
    stream.start()
    during = [
        requests.post(server.url("/inspect"), json=inspect_body, timeout=120).json()
        for _ in range(3)
    ]
    stream.join(timeout=120)
    assert results["text"] == expected
    assert all(d == alone for d in during)
