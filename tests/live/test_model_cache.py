"""One copy of each model in memory on the real server, and every copy accounted for.

Issue 23, kind 9 (omlx #1938): with LLMVIZ_CACHE_SIZE=1 and traffic alternating between
two models while streams run, an evicted model that was still streaming was loaded
again beside its old copy, and GET /models showed only one model.
"""

from __future__ import annotations

import contextlib

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import wait_for
from tests.support.sse_client import SSEEvent, stream_events

LONG = {"prompt": "x", "max_new_tokens": 2000, "ignore_eos": True, "temperature": 1.0}


def _models(live) -> list[dict]:
    return requests.get(live.url("/models"), timeout=5).json()["loaded"]


def _copies(live) -> dict[str, list[bool]]:
    """model_id -> the `retiring` flag of each copy GET /models lists."""
    copies: dict[str, list[bool]] = {}
    for entry in _models(live):
        copies.setdefault(entry["model_id"], []).append(entry["retiring"])
    return copies


def _loaded_gauge(live) -> float:
    text = requests.get(live.url("/metrics"), timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llmviz_loaded_models":
                return sample.value
    raise AssertionError("no llmviz_loaded_models gauge")


def _tokenize(live, model_id: str) -> None:
    body = {"model_id": model_id, "prompt": "x"}
    assert requests.post(live.url("/tokenize"), json=body, timeout=60).status_code == 200


@contextlib.contextmanager
def _streaming(live, model_id: str):
    """A long stream of `model_id`, open (its first token read) while the block runs."""
    body = {"model_id": model_id, **LONG}
    with requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        events = stream_events(r)
        next(e for e in events if isinstance(e, SSEEvent))  # the first piece of text
        yield


def test_alternating_models_while_streaming_keep_one_copy_each(start_server):
    live = start_server(LLMVIZ_CACHE_SIZE="1", LLMVIZ_MAX_NEW_TOKENS="2000")
    with _streaming(live, "slow-gpt2"):
        _tokenize(live, "tiny-llama")  # evicts slow-gpt2, which goes on streaming
        assert _copies(live) == {"tiny-llama": [False], "slow-gpt2": [True]}
        assert _loaded_gauge(live) == 2  # the gauge counts copies in memory, not entries
        with _streaming(live, "slow-gpt2"):  # takes the streaming copy back
            assert _copies(live) == {"slow-gpt2": [False]}  # tiny-llama was idle: freed
            _tokenize(live, "tiny-llama")
            with _streaming(live, "slow-gpt2"):
                assert _copies(live) == {"slow-gpt2": [False]}
                assert _loaded_gauge(live) == 1
    assert live.log().count("loaded model slow-gpt2") == 1
    assert live.log().count("loaded model tiny-llama") == 2


def test_unloading_a_streaming_model_then_asking_for_it_reuses_it(start_server):
    live = start_server(LLMVIZ_MAX_NEW_TOKENS="2000")
    with _streaming(live, "slow-gpt2"):
        unloaded = requests.delete(live.url("/models/slow-gpt2"), timeout=10)
        assert unloaded.status_code == 200 and unloaded.json()["finishing"] == 1
        assert _copies(live) == {"slow-gpt2": [True]}  # still in memory, and listed
        with _streaming(live, "slow-gpt2"):
            assert _copies(live) == {"slow-gpt2": [False]}
    assert live.log().count("loaded model slow-gpt2") == 1


def test_a_retiring_copy_leaves_the_listing_when_its_stream_ends(start_server):
    live = start_server(LLMVIZ_CACHE_SIZE="1", LLMVIZ_MAX_NEW_TOKENS="2000")
    with _streaming(live, "slow-gpt2"):
        _tokenize(live, "tiny-llama")
        assert "slow-gpt2" in _copies(live)
    # The client left: the stream is cancelled, the copy closed and freed.
    wait_for(lambda: _copies(live) == {"tiny-llama": [False]}, timeout=20, message="one copy")
