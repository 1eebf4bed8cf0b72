"""The /v1 API through Flask's test client: every refused field names itself in OpenAI's
error shape, defaults follow OpenAI, and the small pieces (error types, logprob rule) hold."""

from __future__ import annotations

import json
import logging

import pytest

from app.web.v1 import errors
from app.web.v1.views import NO_LOGPROB, by_text, logprob

CHAT = [{"role": "user", "content": "Hi"}]

REFUSED = [
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix", "text insertion"),
    ("/v1/completions", {"prompt": "x", "best_of": 2}, "best_of", "ranking extra samples"),
    ("/v1/completions", {"prompt": "x", "n": 17}, "n", "less than or equal to 16"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs", "less than or equal to 5"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens", "greater than or equal"),
    ("/v1/completions", {"prompt": "x", "temperature": 2.5}, "temperature", "less than or equal"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 3}, "presence_penalty", "2"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": -3}, "frequency_penalty", "-2"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, "stop.0", "at least 1 character"),
    ("/v1/completions", {"prompt": "x", "stop": ""}, "stop.0", "at least 1 character"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, "stop", "valid list"),
    ("/v1/completions", {"prompt": "x", "stop": ["a"] * 9}, "stop", "at most 8"),
    ("/v1/completions", {"prompt": "x", "seed": "7"}, "seed", "valid integer"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream", "valid boolean"),
    (
        "/v1/completions",
        {"prompt": "x", "stream_options": {"include_usage": True}},
        "stream_options",
        "only allowed when `stream` is true",
    ),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"the": 1}}, "logit_bias", "token ids"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"1": 101}}, "logit_bias.1", "100"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias", "vocabulary"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, "max_tokens", "LLMVIZ_MAX_NEW_TOKENS"),
    ("/v1/completions", {"prompt": "x", "best_ofs": 1}, "best_ofs", "not supported"),
    ("/v1/completions", {"prompt": [[]]}, "prompt", "a list of lists of token ids"),
    ("/v1/completions", {"prompt": [99999]}, "prompt", "outside this model's vocabulary"),
    ("/v1/completions", {"prompt": "x", "model": "nobody/none"}, "model", "nobody/none"),
    ("/v1/completions", {"prompt": "x", "model": "../etc"}, "model", "absolute paths"),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "top_logprobs": 2},
        "top_logprobs",
        "needs `logprobs: true`",
    ),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "logprobs": True, "top_logprobs": 21},
        "top_logprobs",
        "less than or equal to 20",
    ),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 3, "max_completion_tokens": 4},
        "max_tokens",
        "send one of them",
    ),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "tools": [{"type": "function"}]},
        "tools",
        "at most 0 items",
    ),
    ("/v1/chat/completions", {"messages": CHAT, "tool_choice": "auto"}, "tool_choice", "'none'"),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "response_format": {"type": "json_object"}},
        "response_format.type",
        "'text'",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        "messages.0.content.0.type",
        "text",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "robot", "content": "x"}]},
        "messages.0.role",
        "'user'",
    ),
    ("/v1/chat/completions", {"messages": CHAT, "functions": []}, "functions", "not supported"),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "max_completion_tokens": 5000},
        "max_completion_tokens",
        "LLMVIZ_MAX_NEW_TOKENS",
    ),
]


@pytest.mark.parametrize(("path", "body", "param", "words"), REFUSED)
def test_each_refused_field_is_a_400_naming_it(client, path, body, param, words):
    answer = client.post(path, json={"model": "tiny-llama", **body})
    error = answer.get_json()["error"]
    status = 404 if param == "model" and "nobody" in words else 400
    assert answer.status_code == status, error
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == ("model_not_found" if status == 404 else "bad_request")


def test_a_chat_that_fills_the_context_leaves_no_room_to_answer(client):
    long = [{"role": "user", "content": "word " * 5000}]
    error = client.post("/v1/chat/completions", json={"model": "tiny-gpt2", "messages": long})
    assert error.status_code == 400


def test_defaults_are_openais_and_max_tokens_0_generates_nothing(client):
    answer = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 0}).get_json()
    assert answer["choices"] == [
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
    ]
    assert answer["usage"]["completion_tokens"] == 0
    default = client.post(
        "/v1/completions", json={"prompt": "Hello", "seed": 1, "ignore_eos": True}
    ).get_json()
    assert default["usage"]["completion_tokens"] == 16  # OpenAI's default max_tokens
    # temperature 1 and top_p 1 by default: the same as asking for them.
    asked = client.post(
        "/v1/completions",
        json={"prompt": "Hello", "seed": 1, "ignore_eos": True, "temperature": 1, "top_p": 1},
    ).get_json()
    assert asked["choices"][0]["text"] == default["choices"][0]["text"]


def test_chat_answers_n_messages_and_nulls_mean_defaults(client):
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "system", "content": "Be brief."}, *CHAT],
        "n": 2,
        "max_tokens": 4,
        "temperature": None,
        "stop": None,
        "seed": 3,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "user": "student-7",
        "stream": False,
    }
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.get_json()
    shown = answer.get_json()
    assert shown["object"] == "chat.completion" and shown["id"].startswith("chatcmpl-")
    assert [c["index"] for c in shown["choices"]] == [0, 1]
    assert all(c["message"]["role"] == "assistant" for c in shown["choices"])
    assert all(c["logprobs"] is None for c in shown["choices"])


def test_the_user_field_reaches_the_request_log(client, caplog):
    caplog.set_level(logging.INFO, logger="llmviz.requests")
    body = {"prompt": "Hi", "max_tokens": 1, "user": "student-7"}
    client.post("/v1/completions", json=body).close()  # the log line is written on close
    lines = [r.getMessage() for r in caplog.records if r.name == "llmviz.requests"]
    assert any('user="student-7"' in line and "/v1/completions" in line for line in lines), lines


def test_unknown_v1_routes_and_methods_answer_in_openais_shape(client):
    for method, path, status in [("GET", "/v1/nothing", 404), ("DELETE", "/v1/models", 405)]:
        answer = client.open(path, method=method)
        assert answer.status_code == status
        assert set(answer.get_json()["error"]) == {"message", "type", "param", "code"}
    native = client.get("/nothing")
    assert set(native.get_json()) == {"error", "code"}  # the native API keeps its own shape


def test_a_stream_failure_ends_with_an_error_chunk_then_done(client, monkeypatch):
    from app.engine import job as job_module

    def broken(self, logits, attention=None):
        raise RuntimeError("kaput")

    monkeypatch.setattr(job_module.GenerationJob, "take", broken)
    raw = client.post(
        "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True}
    ).get_data(as_text=True)
    data = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"


def test_error_types_follow_the_status():
    assert [errors.error_type(s) for s in (400, 401, 403, 404, 413, 429, 499, 500, 503)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "invalid_request_error",
        "invalid_request_error",
        "rate_limit_error",
        "invalid_request_error",
        "server_error",
        "server_error",
    ]
    assert errors.applies("/v1/models") and errors.applies("/v1")
    assert not errors.applies("/v10/models") and not errors.applies("/generate")


def test_non_finite_logprobs_are_minus_9999_and_tokens_that_read_alike_keep_the_likeliest():
    assert logprob(float("-inf")) == NO_LOGPROB == -9999.0
    assert logprob(float("nan")) == NO_LOGPROB
    assert logprob(-1.5) == -1.5
    assert by_text([("\ufffd", -1.0), ("a", -2.0), ("\ufffd", -0.5)]) == {
        "\ufffd": -1.0,
        "a": -2.0,
    }
