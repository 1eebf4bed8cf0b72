"""Request bodies: every invalid field is a JSON 400 (or 404), and extra fields are ignored."""

from __future__ import annotations

import pytest

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


# -- generation controls --


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.mark.parametrize(
    "extra",
    [
        {"stop": ["a"] * 9},
        {"stop": [""]},
        {"stop": "a"},
        {"stop": [1]},
        {"top_logprobs": 21},
        {"top_logprobs": -1},
        {"top_k": "3"},
        {"seed": True},
        {"seed": 1.5},
        {"ignore_eos": "yes"},
        {"details": 1},
        {"messages": CHAT},  # both prompt and messages
        {"prompt": None},  # neither
        {"prompt": None, "messages": []},
        {"prompt": None, "messages": [{"role": "user"}]},
        {"prompt": None, "messages": [{"role": "", "content": "x"}]},
        {"prompt": None, "messages": "hello"},
    ],
)
def test_bad_controls_are_400(client, extra):
    body = {"model_id": "tiny-llama", "prompt": "x", **extra}
    for path in ("/generate", "/generate/stream"):
        response = client.post(path, json=body)
        assert response.status_code == 400, (path, response.get_json())
        assert response.get_json()["code"] == "bad_request"


# -- detokenize and inspect --


@pytest.mark.parametrize(
    "body",
    [
        {"token_ids": [10**9]},
        {"token_ids": [-1]},
        {"token_ids": "1 2"},
        {"token_ids": [1.5]},
        {},
    ],
)
def test_bad_detokenize_is_400(client, body):
    response = client.post("/detokenize", json={"model_id": "tiny-gpt2", **body})
    assert response.status_code == 400


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


@pytest.mark.parametrize("path", ["/tokenize", "/generate", "/inspect"])
def test_model_names_the_model_as_model_id_does(client, path):
    """OpenAI's `model`, sent to a native endpoint, is not ignored: it picks the model."""
    body = {"prompt": "Hello there", "max_new_tokens": 2, "temperature": 0}
    by_id = client.post(path, json={**body, "model_id": "tiny-llama"}).get_json()
    by_model = client.post(path, json={**body, "model": "tiny-llama"}).get_json()
    default = client.post(path, json=body).get_json()
    assert by_model == by_id
    assert by_model != default  # tiny-gpt2's answer, which `model` used to get silently
    same = client.post(path, json={**body, "model": "tiny-llama", "model_id": "tiny-llama"})
    assert same.status_code == 200 and same.get_json() == by_id


def test_model_and_model_id_naming_two_models_is_a_400(client):
    answer = client.post(
        "/generate", json={"prompt": "Hi", "model": "tiny-llama", "model_id": "tiny-gpt2"}
    )
    assert answer.status_code == 400
    assert "`model` and `model_id` name different models" in answer.get_json()["error"]
