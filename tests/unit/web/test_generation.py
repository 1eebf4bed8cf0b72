"""POST /generate through Flask's test client: the seed behaviour and the context limit."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import MODEL_IDS


@pytest.mark.parametrize("name", MODEL_IDS)
def test_generate_greedy_is_deterministic_and_echoes_the_prompt(client, name):
    request = {"model_id": name, "prompt": "Once upon a time", "max_new_tokens": 12}
    request["temperature"] = 0
    first = client.post("/generate", json=request)
    second = client.post("/generate", json=request)
    assert first.status_code == 200
    text = first.get_json()["text"]
    assert text.startswith("Once upon a time")
    assert len(text) > len("Once upon a time")
    assert second.get_json()["text"] == text


def test_generate_return_full_text_false_gives_the_continuation(client):
    request = {"prompt": "Once upon a time", "max_new_tokens": 8, "temperature": 0}
    full = client.post("/generate", json=request).get_json()["text"]
    request["return_full_text"] = False
    continuation = client.post("/generate", json=request).get_json()["text"]
    assert full == "Once upon a time" + continuation


def test_generate_seeded_sampling_repeats(client):
    request = {"model_id": "tiny-llama", "prompt": "Hi", "max_new_tokens": 16, "seed": 11}
    request["temperature"] = 1.0
    texts = {client.post("/generate", json=request).get_json()["text"] for _ in range(3)}
    assert len(texts) == 1


def test_generate_ignore_eos_generates_exactly_max_new_tokens(client, app):
    request = {"prompt": "Hi", "max_new_tokens": 40, "temperature": 0, "ignore_eos": True}
    before = _generated_tokens(client)
    assert client.post("/generate", json=request).status_code == 200
    assert _generated_tokens(client) - before == 40


def test_empty_prompt_starts_from_bos(client):
    response = client.post("/generate", json={"prompt": "", "max_new_tokens": 3, "temperature": 0})
    assert response.status_code == 200


def _generated_tokens(client) -> int:
    loaded = client.get("/models").get_json()["loaded"]
    return sum(model["generated_tokens"] for model in loaded)


def test_prompt_longer_than_the_context_names_both_numbers(client):
    prompt = "Hello world " * 1200
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 100})
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "2048" in message and "100" in message
