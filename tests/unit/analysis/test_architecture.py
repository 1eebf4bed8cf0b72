"""Architecture descriptions from configs alone (no weights): GPT-2 small, a GQA Llama."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, LlamaConfig

from app import create_app


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
