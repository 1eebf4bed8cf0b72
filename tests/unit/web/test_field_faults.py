"""Faults reported against other servers (issue 11, F1, F4, F6, F7, F8), through Flask's client.

The faults that lived in the HTTP path (F2, F3, F5, F7's chunked body) are tested
against the real gunicorn server in tests/live/test_field_faults.py.
"""

from __future__ import annotations

import json

import pytest

from app import create_app
from tests.support.sse_client import SSEEvent, parse
from tests.support.tiny_models import save_gpt2

PROMPT = {"model_id": "tiny-gpt2", "prompt": "The cat sat", "max_new_tokens": 8}


# -- F1: every user number that scales logits works, or is refused with a 400 ----------


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
def test_a_temperature_near_zero_acts_as_greedy(client, model_id):
    body = {**PROMPT, "model_id": model_id, "ignore_eos": True}
    greedy = client.post("/generate", json={**body, "temperature": 0})
    tiny = client.post("/generate", json={**body, "temperature": 1e-40, "seed": 3})
    assert greedy.status_code == tiny.status_code == 200
    assert tiny.get_json()["text"] == greedy.get_json()["text"]


@pytest.mark.parametrize(
    "controls",
    [
        {"temperature": 1e-40},
        {"temperature": 0.7, "repetition_penalty": 1e-300},
        {"temperature": 1e-40, "repetition_penalty": 1e300},
        {"temperature": 1e300, "top_p": 1e-300},
        {"temperature": 0.7, "repetition_penalty": 5e-324, "top_k": 1},
    ],
)
def test_extreme_scaling_never_fails_and_reports_json_safe_logprobs(client, controls):
    body = {**PROMPT, **controls, "ignore_eos": True, "details": True, "top_logprobs": 3}
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.get_json()
    tokens = response.get_json()["details"]["tokens"]
    assert len(tokens) == 8
    for token in tokens:  # logprobs are numbers or null (-inf), never NaN
        assert token["logprob"] is None or token["logprob"] <= 0
    stream = client.post("/generate/stream", json=body).get_data(as_text=True)
    assert "event: error" not in stream
    assert len([e for e in parse(stream) if getattr(e, "event", "") == "token"]) == 8


# -- F4: every endpoint that runs a forward pass refuses an input longer than the context --


@pytest.fixture
def short_context(tmp_path, fresh_cache):
    """A client whose model "short" has a context of 32 positions."""
    save_gpt2(tmp_path / "short", n_positions=32)
    return create_app({"model_root": tmp_path, "max_inspect_tokens": 4096}).test_client()


@pytest.mark.parametrize("length", [33, 40, 602])
def test_inspect_longer_than_the_context_is_a_400_naming_both_numbers(short_context, length):
    response = short_context.post("/inspect", json={"model_id": "short", "token_ids": [5] * length})
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert f"{length} tokens" in message and "context length is 32" in message


def test_inspect_of_exactly_the_context_works(short_context):
    response = short_context.post("/inspect", json={"model_id": "short", "token_ids": [5] * 32})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
def test_generation_past_the_context_is_a_400_naming_both_numbers(short_context, path):
    body = {"model_id": "short", "prompt": "a b c d e f g h i j", "max_new_tokens": 30}
    response = short_context.post(path, json=body)
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "max_new_tokens is 30" in message and "context length is 32" in message


# -- F6: one canonical id for every spelling of one model --------------------------------


@pytest.mark.parametrize("spelling", ["tiny-gpt2/", "tiny-gpt2//", "alias", "alias/"])
def test_every_spelling_of_a_model_is_one_model(model_root, fresh_cache, spelling):
    (model_root / "alias").unlink(missing_ok=True)
    (model_root / "alias").symlink_to(model_root / "tiny-gpt2")
    try:
        client = create_app({"model_root": model_root, "cache_size": 2}).test_client()
        for model_id in ("tiny-gpt2", spelling):
            body = {"model_id": model_id, "prompt": "x"}
            assert client.post("/tokenize", json=body).status_code == 200
        loaded = [m["model_id"] for m in client.get("/models").get_json()["loaded"]]
        assert loaded == ["tiny-gpt2"] and fresh_cache.loads_started == 1
        unloaded = client.delete(f"/models/{spelling}")
        assert unloaded.status_code == 200 and unloaded.get_json()["model_id"] == "tiny-gpt2"
        assert client.get("/models").get_json()["loaded"] == []
    finally:
        (model_root / "alias").unlink()


# -- F7: every way a body can be oversized or malformed ---------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"[" * 100_000, 400, "nested too deeply"),
        (b'{"a": ' * 100_000, 400, "nested too deeply"),
        (b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}", 400, "number too long"),
        (b'{"prompt": "caf\xe9"}', 400, "not valid UTF-8"),
        (b'{"prompt": "a"', 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b'{"prompt": NaN}', 400, "prompt"),
        (b'["prompt"]', 400, "JSON object"),
        (b'{"prompt": "' + b"a" * (1024 * 1024) + b'"}', 413, "LLMVIZ_MAX_BODY_BYTES"),
    ],
)
def test_malformed_and_oversized_bodies(client, raw, status, says):
    response = client.post("/tokenize", data=raw)
    assert response.status_code == status
    assert says in response.get_json()["error"]
    assert client.get("/health").status_code == 200


def test_an_oversized_chunked_body_is_a_413(client):
    import io

    body = b'{"prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = client.post(
        "/tokenize",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn says of chunked bodies
    )
    assert response.status_code == 413


# -- F8: a lone surrogate in any text field is a 400 naming the field -------------------

SURROGATE = "\\ud800"  # written into the raw JSON: an escape Python's json decodes alone


@pytest.mark.parametrize(
    ("path", "template", "field"),
    [
        ("/tokenize", '{"prompt": "a%s"}', "prompt"),
        ("/tokenize", '{"messages": [{"role": "user", "content": "x%s"}]}', "messages.0.content"),
        ("/tokenize", '{"messages": [{"role": "us%ser", "content": "x"}]}', "messages.0.role"),
        ("/generate", '{"prompt": "a", "stop": ["ok", "b%s"]}', "stop.1"),
        ("/generate/stream", '{"prompt": "a%s"}', "prompt"),
        ("/inspect", '{"prompt": "%s"}', "prompt"),
        ("/tokenize", '{"model_id": "tiny%s", "prompt": "a"}', "model_id"),
        ("/config", '{"model_id": "tiny%s"}', "model_id"),
        ("/tokenize", '{"prompt": "a", "x%s": 1}', "x"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(client, path, template, field):
    response = client.post(path, data=(template % SURROGATE).encode())
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert f"{field}" in message and "surrogate" in message


def test_a_surrogate_pair_is_ordinary_text(client):
    response = client.post("/tokenize", data=b'{"prompt": "\\ud83e\\udd99"}')  # the llama emoji
    assert response.status_code == 200
    assert "".join(response.get_json()["tokens"]) == "🦙"


def test_details_stream_events_rebuild_generate_text_with_json_only(client):
    # (F2 through the client; the live test uses a model whose output is known.)
    body = {**PROMPT, "temperature": 0, "details": True, "return_full_text": False}
    body["stop"] = ["e"]
    text = client.post("/generate", json=body).get_json()["text"]
    events = [e for e in parse(client.post("/generate/stream", json=body).get_data(as_text=True))]
    assert all(isinstance(e, SSEEvent) and e.event in ("token", "done") for e in events)
    deltas = [json.loads(e.data)["delta"] for e in events]
    assert "".join(deltas) == text


@pytest.mark.parametrize("path", ["/tokenize", "/generate", "/generate/stream", "/inspect"])
def test_text_a_vocabulary_cannot_encode_is_a_400(client, path):
    # nano-sort knows A, B and C only, and has no unknown token to fall back on.
    body = {"model_id": "llmviz/nano-sort", "prompt": "ABD", "max_new_tokens": 3}
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert "cannot encode this text" in response.get_json()["error"]


@pytest.mark.parametrize("model_id", ["local-model", "local-model/", "app"])
def test_a_path_relative_to_the_server_s_folder_is_not_a_model(
    tmp_path, model_root, fresh_cache, monkeypatch, model_id
):
    (tmp_path / "app").mkdir()
    save_gpt2(tmp_path / "local-model")  # a real model, but outside LLMVIZ_MODEL_ROOT
    monkeypatch.chdir(tmp_path)
    client = create_app({"model_root": model_root}).test_client()
    response = client.post("/tokenize", json={"model_id": model_id, "prompt": "x"})
    assert response.status_code == 404
    assert "names a path on the server" in response.get_json()["error"]
    assert fresh_cache.loads_started == 0


def test_compat_streams_with_details_keep_the_prompt(model_root, fresh_cache):
    client = create_app({"model_root": model_root, "stream_compat": True}).test_client()
    body = {"model_id": "tiny-gpt2", "prompt": "Hi there", "max_new_tokens": 3, "details": True}
    events = parse(client.post("/generate/stream", json=body).get_data(as_text=True))
    assert events[0] == SSEEvent("message", "Hi there")  # details streams are not "plain"
    plain = parse(client.post("/generate/stream", json={**body, "details": False}).get_data(True))
    assert "Hi there" not in "".join(e.data for e in plain if isinstance(e, SSEEvent))


def test_top_logprobs_without_details_is_refused_not_ignored(client):
    response = client.post("/generate", json={"prompt": "x", "top_logprobs": 3})
    assert response.status_code == 400
    assert "`top_logprobs` needs `details: true`" in response.get_json()["error"]


def test_inspect_refuses_a_long_input_before_working_out_its_tokens(client, monkeypatch):
    from app.models import prompts

    def not_for_refused_inputs(*args):
        raise AssertionError("pieces and offsets were worked out for an input to refuse")

    monkeypatch.setattr(prompts, "tokenize", not_for_refused_inputs)
    response = client.post("/inspect", json={"prompt": "the king " * 2000})
    assert response.status_code == 413
    assert "LLMVIZ_MAX_INSPECT_TOKENS" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/inspect", {"prompt": "hi", "include": ["attention"], "attention": {"heads": []}}),
        ("/generate", {"prompt": "hi", "details": True, "attention": "last_row", "heads": []}),
    ],
)
def test_an_empty_head_list_is_a_400(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 400 and "heads" in response.get_json()["error"]


@pytest.mark.parametrize(("stop", "says"), [([""], "stop.0: "), (["ok", "x" * 257], "stop.1: ")])
def test_a_bad_stop_string_is_named_by_its_place(client, stop, says):
    response = client.post("/generate", json={"prompt": "x", "stop": stop})
    assert response.status_code == 400 and says in response.get_json()["error"]
