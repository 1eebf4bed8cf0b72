"""The HTTP API through Flask's test client: seed behaviour, validation and errors."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL_IDS


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}


@pytest.mark.parametrize("name", MODEL_IDS)
def test_tokenize_matches_the_tokenizer(client, tokenizers, name):
    response = client.post("/tokenize", json={"model_id": name, "prompt": "Hello world"})
    assert response.status_code == 200
    body = response.get_json()
    tokenizer = tokenizers[name]
    assert body["token_ids"] == tokenizer("Hello world")["input_ids"]
    assert body["count"] == len(body["token_ids"])
    assert len(body["tokens"]) == body["count"]
    assert "".join(body["tokens"]) == tokenizer.decode(body["token_ids"])


def test_tokenize_gpt2_style_pieces_keep_their_space(client):
    body = client.post("/tokenize", json={"prompt": "Hello world"}).get_json()
    assert "".join(body["tokens"]) == "Hello world"
    assert any(token.startswith(" w") for token in body["tokens"])


def test_tokenize_uses_the_default_model(client):
    with_default = client.post("/tokenize", json={"prompt": "Hi"}).get_json()
    explicit = client.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": "Hi"}).get_json()
    assert with_default == explicit


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


BAD_BODIES = [
    ("not json", 400),
    ("[1, 2]", 400),
    ("null", 400),
    ('{"prompt": 5}', 400),
    ("{}", 400),
    ('{"prompt": "x", "max_new_tokens": 0}', 400),
    ('{"prompt": "x", "max_new_tokens": 100000}', 400),
    ('{"prompt": "x", "max_new_tokens": "5"}', 400),
    ('{"prompt": "x", "max_new_tokens": 2.5}', 400),
    ('{"prompt": "x", "temperature": -0.1}', 400),
    ('{"prompt": "x", "temperature": "hot"}', 400),
    ('{"prompt": "x", "top_p": 0}', 400),
    ('{"prompt": "x", "top_p": 1.5}', 400),
    ('{"prompt": "x", "top_k": -1}', 400),
    ('{"prompt": "x", "repetition_penalty": 0}', 400),
    ('{"prompt": "x", "seed": -1}', 400),
    ('{"prompt": "x", "return_full_text": "no"}', 400),
    ('{"prompt": "x", "model_id": 3}', 400),
    ('{"prompt": "x", "model_id": ""}', 400),
    ('{"prompt": "x", "model_id": "../tiny-gpt2"}', 400),
    ('{"prompt": "x", "model_id": "/etc"}', 400),
    ('{"prompt": "x", "model_id": "a/../../b"}', 400),
    ('{"prompt": "x", "model_id": "no-such-model"}', 404),
    ('{"prompt": "x", "model_id": "owner/no-such-model"}', 404),
    ('{"prompt": "x", "max_new_tokens": 1024, "model_id": "tiny-gpt2"}', 200),
]


@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
@pytest.mark.parametrize(("raw", "status"), BAD_BODIES)
def test_bad_generate_bodies_get_json_errors(client, path, raw, status):
    response = client.post(path, data=raw, content_type="application/json")
    assert response.status_code == status, response.get_data(as_text=True)
    if status != 200:
        body = response.get_json()
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["code"], str)
    assert client.get("/health").status_code == 200


def test_extra_fields_are_ignored(client):
    body = {"prompt": "x", "max_new_tokens": 2, "frobnicate": True, "stream": "yes"}
    assert client.post("/generate", json=body).status_code == 200


def test_json_sent_as_text_plain_is_accepted(client):
    response = client.post("/tokenize", data='{"prompt": "Hi"}', content_type="text/plain")
    assert response.status_code == 200


def test_prompt_longer_than_the_context_names_both_numbers(client):
    prompt = "Hello world " * 1200
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 100})
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "2048" in message and "100" in message


def test_body_over_the_limit_is_413(model_root):
    from app import create_app

    small = create_app({"model_root": model_root, "max_body_bytes": 1000}).test_client()
    response = small.post("/generate", json={"prompt": "x" * 2000})
    assert response.status_code == 413
    assert "LLMVIZ_MAX_BODY_BYTES" in response.get_json()["error"]


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").get_json()["code"] == "not_found"
    response = client.get("/generate")
    assert response.status_code == 405
    assert "error" in response.get_json()


def test_cors_preflight_and_response_headers(client):
    preflight = client.options(
        "/generate/stream",
        headers={
            "Origin": "http://viz.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    response = client.post("/tokenize", json={"prompt": "x"}, headers={"Origin": "http://a.b"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origins_can_be_restricted(model_root):
    from app import create_app

    app = create_app({"model_root": model_root, "cors_origins": ("http://good.example",)})
    client = app.test_client()
    good = client.get("/health", headers={"Origin": "http://good.example"})
    bad = client.get("/health", headers={"Origin": "http://evil.example"})
    assert good.headers["Access-Control-Allow-Origin"] == "http://good.example"
    assert "Access-Control-Allow-Origin" not in bad.headers
