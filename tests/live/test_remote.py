"""Remote models (LLMVIZ_REMOTE_MODELS): a second server of this project stands in as the
remote OpenAI-compatible server; the front gives its text, streams and logprobs, refuses
what a remote cannot give, stops the remote's work when its client leaves, and translates
every failure of the remote into a clear JSON error."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.support.broken_remote import CUT_AFTER, BrokenRemote
from tests.support.server import LiveServer, wait_for
from tests.support.sse_client import SSEEvent, message_data, parse, stream_events

BODY = {"prompt": "Hello world", "max_new_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def far(model_root):
    """The remote: this project's own server, on its own port."""
    with LiveServer({"LLMVIZ_MODEL_ROOT": str(model_root)}) as live:
        yield live


def _remotes(far: LiveServer, model_root, **extra) -> str:
    remotes = {
        "far": {"url": far.url("/v1"), "model": "tiny-gpt2", "engine": "llmviz"},
        "far-slow": {"url": far.url("/v1"), "model": "slow-gpt2", "engine": "llmviz"},
        "far-llama": {"url": far.url("/v1"), "model": "tiny-llama", "engine": "llmviz"},
        "far-tok": {
            "url": far.url("/v1"),
            "model": "tiny-gpt2",
            "engine": "llmviz",
            "tokenizer": str(model_root / "tiny-gpt2"),
        },
        **extra,
    }
    return json.dumps(remotes)


@pytest.fixture(scope="module")
def front(far, model_root):
    env = {"LLMVIZ_MODEL_ROOT": str(model_root), "LLMVIZ_REMOTE_MODELS": _remotes(far, model_root)}
    with LiveServer(env) as live:
        yield live


def _tokens(events) -> list[dict]:
    return [json.loads(e.data) for e in events if isinstance(e, SSEEvent) and e.event == "token"]


@pytest.mark.parametrize("model_id", ["far", "far-tok"])
def test_text_and_streams_equal_the_remotes(front, far, model_id):
    expected = far.generate(model_id="tiny-gpt2", **BODY)
    assert front.generate(model_id=model_id, **BODY) == expected
    assert front.stream_text(model_id=model_id, **BODY) == expected


def test_messages_go_to_the_remotes_chat_template(front, far):
    messages = [{"role": "user", "content": "Hi there"}]
    chat = {"max_new_tokens": 6, "temperature": 0, "messages": messages}
    expected = far.generate(model_id="tiny-llama", return_full_text=False, **chat)
    assert front.generate(model_id="far-llama", return_full_text=False, **chat) == expected
    assert front.stream_text(model_id="far-llama", return_full_text=False, **chat) == expected


def test_details_logprobs_and_alternatives_equal_the_remotes(front, far):
    asked = {**BODY, "details": True, "top_logprobs": 3}
    theirs = _tokens(far.stream(model_id="tiny-gpt2", **asked))
    ours = _tokens(front.stream(model_id="far", **asked))
    assert len(ours) == len(theirs) == 12
    for mine, real in zip(ours, theirs, strict=True):
        assert mine["text"] == real["text"]
        assert mine["logprob"] == pytest.approx(real["logprob"], abs=1e-4)
        assert mine["id"] == -1  # the remote's /v1 names tokens by text only
        # /v1 keys alternatives by text, keeping the likeliest of tokens that read alike.
        best: dict[str, float] = {}
        for alt in real["top_logprobs"]:
            best.setdefault(alt["text"], alt["logprob"])
        assert {a["text"]: a["logprob"] for a in mine["top_logprobs"]} == pytest.approx(best)
    whole = front.post("/generate", model_id="far", **asked)["details"]
    assert [t["logprob"] for t in whole["tokens"]] == [t["logprob"] for t in ours]
    assert (
        whole["prompt_tokens"]
        == far.post("/tokenize", model_id="tiny-gpt2", prompt="Hello world")["count"]
    )


def test_tokenize_by_the_remote_or_the_local_tokenizer(front, far):
    theirs = far.post("/tokenize", model_id="tiny-gpt2", prompt="Hello world")
    by_remote = front.post("/tokenize", model_id="far", prompt="Hello world")
    assert by_remote["token_ids"] == theirs["token_ids"] and by_remote["tokens"] is None
    assert front.post("/tokenize", model_id="far-tok", prompt="Hello world") == theirs
    text = front.post("/detokenize", model_id="far-tok", token_ids=theirs["token_ids"])["text"]
    assert text == "Hello world"


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/inspect", {"prompt": "Hello"}, "needs the model itself"),
        ("/models/far/config", None, "needs the model itself"),
        ("/generate", {**BODY, "details": True, "attention": "last_row"}, "live attention"),
        ("/generate/stream", {**BODY, "details": True, "attention": "last_row"}, "live attention"),
        ("/detokenize", {"token_ids": [1, 2]}, "local `tokenizer`"),
        (
            "/generate",
            {**BODY, "interventions": [{"kind": "ablate_mlp", "layer": 0}]},
            "`interventions`",
        ),
        ("/tokenize", {"messages": [{"role": "user", "content": "x"}]}, "local `tokenizer`"),
    ],
)
def test_what_a_remote_cannot_give_is_a_clear_400(front, path, body, named):
    if body is None:
        response = requests.get(front.url(path), timeout=30)
    else:
        response = requests.post(front.url(path), json={"model_id": "far", **body}, timeout=30)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == "not_available_for_remote_model" and named in answer["error"]


def test_a_client_that_leaves_stops_the_remotes_generation(front, far):
    body = {"model_id": "far-slow", "prompt": "Hi", "max_new_tokens": 1000, "temperature": 0}
    with requests.post(front.url("/generate/stream"), json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for event in stream_events(r):
            seen += isinstance(event, SSEEvent)
            if seen >= 3:
                break
        assert far.stats("slow-gpt2")["active"] == 1
    wait_for(
        lambda: far.stats("slow-gpt2")["active"] == 0, timeout=10, message="the remote stopped"
    )
    made = far.stats("slow-gpt2")["generated_tokens"]
    time.sleep(0.5)
    assert far.stats("slow-gpt2")["generated_tokens"] == made < 1000


def test_the_remotes_refusal_is_passed_on(front):
    # The remote's /v1/completions takes 0 to 5 alternatives (OpenAI's limit).
    asked = {**BODY, "model_id": "far", "details": True, "top_logprobs": 6}
    response = requests.post(front.url("/generate"), json=asked, timeout=30)
    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "remote_refused"
    assert "answered 400" in answer["error"] and "logprobs" in answer["error"]


@pytest.fixture(scope="module")
def broken(far, model_root):
    """A front whose remotes fail: a stopped one, and each mode of BrokenRemote."""
    with (
        BrokenRemote("hang") as hang,
        BrokenRemote("500") as fails,
        BrokenRemote("401") as denies,
        BrokenRemote("cut") as cut,
    ):
        extra = {
            "gone": {"url": "http://127.0.0.1:9/v1", "engine": "llmviz"},  # nothing listens
            "hang": {"url": hang.url, "timeout": 1},
            "fails": {"url": fails.url},
            "denies": {"url": denies.url},
            "cut": {"url": cut.url},
        }
        env = {
            "LLMVIZ_MODEL_ROOT": str(model_root),
            "LLMVIZ_REMOTE_MODELS": _remotes(far, model_root, **extra),
        }
        with LiveServer(env) as live:
            yield live


@pytest.mark.parametrize(
    ("model_id", "status", "code", "said"),
    [
        ("gone", 502, "remote_failed", "connection refused"),
        ("hang", 504, "remote_timeout", "no answer within 1 s"),
        ("fails", 502, "remote_failed", "answered 500: broken on purpose (500)"),
        ("denies", 502, "remote_failed", "answered 401: broken on purpose (401)"),
        ("cut", 502, "remote_failed", "ended its stream before it finished"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
def test_remote_failures_are_translated_and_the_server_keeps_serving(
    broken, model_id, status, code, said, path
):
    started = time.monotonic()
    response = requests.post(broken.url(path), json={**BODY, "model_id": model_id}, timeout=30)
    assert time.monotonic() - started < 10
    if model_id == "cut" and path == "/generate/stream":
        # Cut mid-stream: the tokens that came, then an error event.
        assert response.status_code == 200
        events = parse(response.text)
        assert "".join(message_data(events)).endswith("".join(f" w{i}" for i in range(CUT_AFTER)))
        errors = [
            json.loads(e.data) for e in events if isinstance(e, SSEEvent) and e.event == "error"
        ]
        assert errors and errors[0]["code"] == code and said in errors[0]["error"]
    else:
        assert response.status_code == status, response.text
        answer = response.json()
        assert answer["code"] == code and said in answer["error"]
    assert broken.generate(model_id="far", **BODY)  # the others still work


def test_v1_completions_through_the_front_equal_the_remotes(front, far):
    asked = {"prompt": "Hello world", "max_tokens": 8, "temperature": 0, "logprobs": 3}
    theirs = far.post("/v1/completions", model="tiny-gpt2", **asked)
    ours = front.post("/v1/completions", model="far", **asked)
    assert ours["model"] == "far" and ours["object"] == "text_completion"
    mine, real = ours["choices"][0], theirs["choices"][0]
    assert mine["text"] == real["text"] and mine["finish_reason"] == real["finish_reason"]
    assert mine["logprobs"]["tokens"] == real["logprobs"]["tokens"]
    assert mine["logprobs"]["token_logprobs"] == pytest.approx(
        real["logprobs"]["token_logprobs"], abs=1e-4
    )
    assert mine["logprobs"]["top_logprobs"] == real["logprobs"]["top_logprobs"]
    assert ours["usage"] == theirs["usage"]
    # Streamed, n = 2 seeded choices: each as the remote gives choice i of the same request.
    seeded = {"prompt": "Hello", "max_tokens": 6, "n": 2, "seed": 7, "stream": True}
    chunks = _v1_chunks(front, {**seeded, "model": "far"})
    expected = _v1_chunks(far, {**seeded, "model": "tiny-gpt2"})
    assert _texts(chunks) == _texts(expected) and len(_texts(chunks)) == 2


def test_v1_chat_through_the_front_equals_the_remotes(front, far):
    asked = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    theirs = far.post("/v1/chat/completions", model="tiny-llama", **asked)["choices"][0]
    ours = front.post("/v1/chat/completions", model="far-llama", **asked)["choices"][0]
    assert ours["message"]["content"] == theirs["message"]["content"]
    got, real = ours["logprobs"]["content"], theirs["logprobs"]["content"]
    assert [t["token"] for t in got] == [t["token"] for t in real]
    assert [t["logprob"] for t in got] == pytest.approx([t["logprob"] for t in real], abs=1e-4)


def test_v1_echo_with_logprobs_needs_the_model(front):
    asked = {"model": "far", "prompt": "Hi", "max_tokens": 2, "echo": True, "logprobs": 1}
    response = requests.post(front.url("/v1/completions"), json=asked, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "not_available_for_remote_model" and error["param"] == "echo"


def _v1_chunks(live: LiveServer, body: dict) -> list[dict]:
    response = requests.post(live.url("/v1/completions"), json=body, timeout=60)
    assert response.status_code == 200, response.text
    return [json.loads(d) for d in message_data(parse(response.text)) if d != "[DONE]"]


def _texts(chunks: list[dict]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts
