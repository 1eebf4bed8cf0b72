"""The visualization blueprint: a loaded model's config, config errors, /inspect limits."""

from __future__ import annotations

from app import create_app

EVERYTHING = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


def test_loaded_model_config_has_dtype_and_device(client):
    client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "x"})
    body = client.get("/models/tiny-llama/config").get_json()
    assert body["dtype"] == "float32" and body["device"] == "cpu"
    assert body["n_kv_heads"] == 2


def test_config_errors(client):
    assert client.get("/models/nobody/nothing/config").status_code == 404
    assert client.get("/models/config?model_id=../etc").status_code == 400


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
