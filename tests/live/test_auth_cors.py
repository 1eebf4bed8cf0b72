"""Keys and CORS over HTTP, through the real gunicorn server: what startup refuses, and
what every answer says it varies on."""

from __future__ import annotations

import pytest
import requests

GOOD, OTHER, EVIL = "http://good.example", "http://other.example", "http://evil.example"
KEY = "live-key-0123"


def test_gunicorn_will_not_start_on_a_keys_file_without_a_key(start_server, tmp_path):
    """agentfield #424: a keys file of comments only once started a server open to all."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("# the keys go here\n")
    with pytest.raises(AssertionError, match="gunicorn exited") as failed:
        start_server(LLMVIZ_API_KEYS_FILE=str(keys_file))
    assert "LLMVIZ_API_KEYS_FILE" in str(failed.value)
    assert "holds no key" in str(failed.value)


def _vary(response: requests.Response) -> set[str]:
    return {item.strip().lower() for item in response.headers.get("Vary", "").split(",")} - {""}


def test_every_answer_says_it_varies_by_origin_over_http(start_server):
    """expressjs/cors #106: an answer to a disallowed Origin (or a stream, a 401, a 404)
    carried no `Vary: Origin`, so a shared cache could give it to an allowed origin."""
    live = start_server(
        LLMVIZ_CORS_ORIGINS=f"{GOOD},{OTHER}",
        LLMVIZ_API_KEYS=KEY,
        LLMVIZ_DEFAULT_MODEL="tiny-gpt2",
    )
    keyed = {"Authorization": f"Bearer {KEY}"}
    for origin in (EVIL, GOOD):  # the disallowed origin first: that is where it was missing
        headers = {"Origin": origin}
        answers = {
            "health": requests.get(live.url("/health"), headers=headers, timeout=30),
            "401": requests.get(live.url("/models"), headers=headers, timeout=30),
            "404": requests.get(live.url("/no/such"), headers={**headers, **keyed}, timeout=30),
            "preflight": requests.options(
                live.url("/generate/stream"),
                headers={**headers, "Access-Control-Request-Method": "POST"},
                timeout=30,
            ),
        }
        with requests.post(
            live.url("/generate/stream"),
            json={"prompt": "Hi", "max_new_tokens": 2},
            headers={**headers, **keyed},
            stream=True,
            timeout=60,
        ) as stream:
            answers["stream"] = stream
            assert stream.headers["Content-Type"].startswith("text/event-stream")
        for name, answer in answers.items():
            assert "origin" in _vary(answer), (origin, name, answer.status_code, answer.headers)
        assert answers["401"].status_code == 401
        assert _vary(answers["401"]) == {"origin", "authorization"}
        allowed = answers["health"].headers.get("Access-Control-Allow-Origin")
        assert allowed == (origin if origin == GOOD else None)
