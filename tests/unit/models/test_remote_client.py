"""Remote models' settings (app/remotes.py) and the reading of each engine's stream shape
(app/models/remote/client.py), on streams written as each engine writes them."""

from __future__ import annotations

import json

import pytest
import requests

from app.config import Settings
from app.engine import SamplingParams, TokenEvent
from app.errors import RemoteFailed
from app.models.remote import RemoteJob
from app.models.remote.client import (
    RemoteAlternative,
    RemoteEnd,
    RemoteText,
    RemoteToken,
    read_tokens,
)
from app.models.remote.job import _reason
from app.remotes import RemoteSpec, parse_remote_models

SPEC = RemoteSpec("big", "http://127.0.0.1:8000/v1", "org/big")


class _Stream:
    """What read_tokens uses of a requests.Response: its body, in pieces."""

    def __init__(self, *events: object, done: bool = True) -> None:
        lines = [f"data: {json.dumps(e) if not isinstance(e, str) else e}" for e in events]
        lines += ["data: [DONE]"] if done else []
        body = "".join(f"{line}\r\n\r\n" for line in lines).encode()
        # Pieces cut anywhere, as the network delivers them.
        self._pieces = [body[i : i + 7] for i in range(0, len(body), 7)]

    def iter_content(self, chunk_size=None):
        return iter(self._pieces)


def _legacy(text, tokens, logprobs, tops, finish=None, **extra):
    logprob_block = {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops}
    choice = {"index": 0, "text": text, "logprobs": logprob_block, "finish_reason": finish}
    return {"choices": [{**choice, **extra}]}


def test_vllm_legacy_logprobs_with_its_token_ids_and_stop_reason():
    stream = _Stream(
        _legacy(" Paris", [" Paris"], [-0.1], [{" Paris": -0.1, " Lyon": -2.5}], token_ids=[6342]),
        _legacy(".", ["."], [-0.3], [{".": -0.3}], finish="stop", stop_reason="\n", token_ids=[13]),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    )
    assert list(read_tokens(SPEC, stream)) == [
        RemoteToken(
            " Paris",
            6342,
            -0.1,
            (RemoteAlternative(" Paris", None, -0.1), RemoteAlternative(" Lyon", None, -2.5)),
        ),
        RemoteToken(".", 13, -0.3, (RemoteAlternative(".", None, -0.3),)),
        RemoteEnd("stop", "\n", 5, 2),
    ]
    assert _reason(RemoteEnd("stop", "\n", 5, 2)) == "stop"
    assert _reason(RemoteEnd("stop", None, 5, 2)) == "eos"
    assert _reason(RemoteEnd("length", None, 5, 2)) == "length"


def test_llama_cpp_answers_completions_logprobs_in_the_chat_shape_with_ids():
    content = [
        {
            "id": 6342,
            "token": " Paris",
            "logprob": -0.1,
            "bytes": [32, 80],
            "top_logprobs": [{"id": 6342, "token": " Paris", "logprob": -0.1}],
        }
    ]
    chunk = {"choices": [{"index": 0, "text": " Paris", "logprobs": {"content": content}}]}
    end = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    assert list(read_tokens(SPEC, _Stream(chunk, end))) == [
        RemoteToken(" Paris", 6342, -0.1, (RemoteAlternative(" Paris", 6342, -0.1),)),
        RemoteEnd("length", None, None, None),
    ]


def test_token_id_placeholders_give_ids_and_the_chunk_keeps_the_text():
    stream = _Stream(
        _legacy("é", ["token_id:2634"], [-1.0], [{"token_id:2634": -1.0, "token_id:9": -3.0}]),
        _legacy("", [], [], [], finish="length"),
    )
    token = next(iter(read_tokens(SPEC, stream)))
    assert token == RemoteToken(
        "é", 2634, -1.0, (RemoteAlternative("", 2634, -1.0), RemoteAlternative("", 9, -3.0))
    )


def test_chat_deltas_without_logprobs_are_one_token_a_chunk():
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    assert list(read_tokens(SPEC, _Stream(*chunks))) == [
        RemoteToken("Hi"),
        RemoteEnd("stop", None, None, None),
    ]


def test_a_chunk_whose_tokens_do_not_join_to_its_text_keeps_the_text():
    # A special token's name, or a token that ends mid-character, is not the text it adds.
    stream = _Stream(_legacy("ab", ["<x>", "zz"], [-1.0, -2.0], [{}, {}], finish="length"))
    tokens = [t for t in read_tokens(SPEC, stream) if isinstance(t, RemoteToken)]
    assert [t.text for t in tokens] == ["", "ab"] and [t.logprob for t in tokens] == [-1.0, -2.0]


@pytest.mark.parametrize(
    ("events", "done", "said"),
    [
        ([_legacy("a", ["a"], [-1.0], [{}])], False, "ended its stream before it finished"),
        ([{"error": {"message": "out of memory"}}], True, "failed mid-stream: out of memory"),
        (["not json"], True, "sent an event that is not JSON"),
        ([_legacy("a", ["a"], [-1.0], [{}])], True, "without a finish reason"),
    ],
)
def test_broken_streams_raise_remote_failed(events, done, said):
    with pytest.raises(RemoteFailed, match=said):
        list(read_tokens(SPEC, _Stream(*events, done=done)))


def test_remote_models_are_read_with_their_defaults(monkeypatch):
    monkeypatch.setenv("BIG_KEY", "sk-secret")
    raw = json.dumps(
        {
            "big": {"url": "http://host:8000/v1/", "model": "org/big", "api_key_env": "BIG_KEY"},
            "small": {"url": "https://h/v1", "engine": "llama.cpp", "timeout": 5},
        }
    )
    specs = parse_remote_models(raw)
    assert specs["big"] == RemoteSpec("big", "http://host:8000/v1", "org/big", "openai", "BIG_KEY")
    assert specs["big"].api_key() == "sk-secret" and specs["big"].host == "host:8000"
    assert specs["small"] == RemoteSpec("small", "https://h/v1", "small", "llama.cpp", timeout=5.0)
    assert "sk-secret" not in repr(specs)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("[]", "non-empty JSON object"),
        ("{", "not valid JSON"),
        ('{"a": "http://h/v1"}', r"LLMVIZ_REMOTE_MODELS\['a'\] must be an object"),
        ('{"a": {}}', r"\['a'\]\.url must be an http\(s\) URL"),
        ('{"a": {"url": "ftp://h/v1"}}', r"url must be an http\(s\) URL"),
        ('{"a": {"url": "http://u:p@h/v1"}}', "must not hold credentials"),
        ('{"a": {"url": "http://h/v1", "key": "x"}}', r"unknown field\(s\) \['key'\]"),
        ('{"a": {"url": "http://h/v1", "engine": "tgi"}}', "engine must be one of"),
        ('{"a": {"url": "http://h/v1", "api_key_env": "NOT_SET_ANYWHERE"}}', "is not set"),
        ('{"a": {"url": "http://h/v1", "api_key_env": "a-b"}}', "must name an environment"),
        ('{"a": {"url": "http://h/v1", "timeout": 0}}', "timeout must be a positive"),
        ('{" a": {"url": "http://h/v1"}}', "no spaces around it"),
    ],
)
def test_bad_remote_models_stop_startup_naming_the_field(raw, said):
    with pytest.raises(ValueError, match=said):
        Settings.from_env({"LLMVIZ_REMOTE_MODELS": raw})


def test_text_without_logprobs_in_a_logprobs_stream_is_no_token():
    # This server sends text it held back (a partial character, a stop string's start)
    # in a last chunk with no logprobs: it belongs to the stream, not to a new token.
    stream = _Stream(
        _legacy("a", ["a"], [-1.0], [{}]),
        {"choices": [{"index": 0, "text": "\ufffd", "logprobs": None}]},
        _legacy("", [], [], [], finish="length"),
    )
    items = list(read_tokens(SPEC, stream, logprobs=True))
    assert items[:2] == [RemoteToken("a", None, -1.0, ()), RemoteText("\ufffd")]
    plain = [
        i
        for i in read_tokens(
            SPEC, _Stream({"choices": [{"text": "b"}]}, _legacy("", [], [], [], finish="stop"))
        )
    ]
    assert plain[0] == RemoteToken("b")


def test_a_job_keeps_as_many_alternatives_as_were_asked_for():
    # llama.cpp's chat logprobs give 20 alternatives for `logprobs: true` with no count.
    params = SamplingParams(logprobs=True, top_logprobs=2)
    job = RemoteJob(SPEC, "completions", {}, [], params, requests.Session())
    alternatives = tuple(RemoteAlternative(t, None, -float(i)) for i, t in enumerate("abcd"))
    job._post(RemoteToken("a", 5, -0.5, alternatives))
    event = next(job.events(1.0))
    assert isinstance(event, TokenEvent)
    assert [alt.text for alt in event.top] == ["a", "b"] and event.token_id == 5
