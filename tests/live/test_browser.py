"""A real browser on another origin: tokenize, stream with fetch, abort with AbortController."""

from __future__ import annotations

import pytest
import requests

from tests.support.server import wait_for

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(browser, page_origin):
    """A headless Chromium tab showing the test page."""
    tab = browser.new_page()
    tab.goto(page_origin + "/page.html")
    yield tab
    tab.close()


def test_tokenize_from_another_origin(page, server):
    result = page.evaluate(
        "([base, body]) => tokenize(base, body)",
        [server.base, {"model_id": "tiny-llama", "prompt": "Hello world"}],
    )
    assert result["status"] == 200
    assert "".join(result["body"]["tokens"]) == "<s>Hello world"  # BOS, then the text as decoded


def test_stream_from_another_origin_matches_generate(page, server):
    body = {"model_id": "tiny-gpt2", "prompt": "Hello 🦙\nworld", "max_new_tokens": 30}
    body["temperature"] = 0
    expected = server.generate(**body)
    result = page.evaluate("([base, body]) => stream(base, body, 0)", [server.base, body])
    assert result["status"] == 200
    assert result["events"][0] == body["prompt"]
    assert "".join(result["events"]) == expected


def test_abort_stops_the_server(page, server):
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 2000}
    body.update(temperature=0, ignore_eos=True)
    requests.post(server.url("/generate"), json={**body, "max_new_tokens": 1}, timeout=60)
    before = server.stats("slow-gpt2")["generated_tokens"]
    result = page.evaluate("([base, body]) => stream(base, body, 5)", [server.base, body])
    assert result["aborted"] and len(result["events"]) >= 5
    wait_for(lambda: server.stats("slow-gpt2")["active"] == 0, timeout=10, message="stop")
    made = server.stats("slow-gpt2")["generated_tokens"] - before
    assert made < 200, f"the server made {made} tokens for a reader that aborted after 4"
