"""Request ids and one JSON log line per request, on the real server; text only when asked."""

from __future__ import annotations

import json

import requests

from tests.support.server import wait_for


def test_request_ids_and_one_json_log_line_per_request(start_server):
    live = start_server(LLMVIZ_LOG_JSON="1")
    given = requests.post(
        live.url("/generate"),
        headers={"X-Request-ID": "trace-42"},
        json={
            "model_id": "tiny-gpt2",
            "prompt": "secret words",
            "max_new_tokens": 4,
            "ignore_eos": True,
        },
        timeout=60,
    )
    assert given.headers["X-Request-ID"] == "trace-42"
    made = requests.get(live.url("/health"), timeout=5).headers["X-Request-ID"]
    assert len(made) == 32 and made != "trace-42"
    line = wait_for(lambda: _log_line(live, "trace-42"), timeout=10, message="the log line")
    entry = json.loads(line[line.index("{") :])
    assert entry["endpoint"] == "/generate" and entry["status"] == 200
    assert entry["model"] == "tiny-gpt2" and entry["generated_tokens"] == 4
    assert entry["prompt_tokens"] > 0 and entry["duration_ms"] > 0
    assert "secret words" not in live.log()  # text stays out unless LLMVIZ_LOG_TEXT=1


def _log_line(live, request_id):
    return next(
        (ln for ln in live.log().splitlines() if f'"request_id": "{request_id}"' in ln), None
    )


def test_text_is_logged_only_when_asked(start_server):
    live = start_server(LLMVIZ_LOG_TEXT="1")
    requests.post(
        live.url("/generate"),
        json={"model_id": "tiny-gpt2", "prompt": "visible words", "max_new_tokens": 2},
        timeout=60,
    )
    wait_for(lambda: "visible words" in live.log(), timeout=10, message="the prompt in the log")
