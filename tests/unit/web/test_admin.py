"""The models blueprint through Flask's test client: GET /models."""

from __future__ import annotations


def test_models_lists_loaded_and_available(client):
    client.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": "x"})
    body = client.get("/models").get_json()
    assert {"tiny-gpt2", "tiny-llama", "slow-gpt2"} <= set(body["available"])
    loaded = {m["model_id"]: m for m in body["loaded"]}["tiny-gpt2"]
    assert loaded["device"] == "cpu" and loaded["dtype"] == "float32"
    assert loaded["memory_bytes"] > 0
