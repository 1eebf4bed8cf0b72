"""README command 1 on a fresh machine: no LLMVIZ_* settings, no network, a real model answers."""

from __future__ import annotations

import os
import time

import requests

from tests.support.server import LiveServer


def test_the_first_command_serves_the_demo_model_with_no_settings_and_no_network():
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("LLMVIZ_", "HF_"))}
    # HF_HUB_OFFLINE=0: the server must find out by itself that the hub is out of reach.
    live = LiveServer({}, base_env={**plain, "HF_HUB_OFFLINE": "0"})
    with live:
        started = time.monotonic()
        response = requests.post(
            live.url("/generate"),
            json={"prompt": "ROMEO:", "max_new_tokens": 24, "temperature": 0},
            timeout=10,
        )
        assert time.monotonic() - started < 10
        assert response.status_code == 200, response.text
        text = response.json()["text"]
        assert text.startswith("ROMEO:") and len(text.strip()) > len("ROMEO:")
        models = requests.get(live.url("/models"), timeout=5).json()
        assert models["default_model"] == "llmviz/shakespeare"
        assert [m["model_id"] for m in models["loaded"]] == ["llmviz/shakespeare"]
