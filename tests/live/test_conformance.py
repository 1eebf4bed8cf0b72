"""The real server keeps to its documented API: bad inputs get their documented 4xx, and
schemathesis finds no server errors and no drift from /openapi.json."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from tests.support.server import REPO

BAD_INPUTS = [
    ("POST", "/generate", "{not json", 400),
    ("POST", "/generate", "[]", 400),
    ("POST", "/generate", '"text"', 400),
    ("POST", "/generate", "{}", 400),
    ("POST", "/generate", '{"prompt": 1}', 400),
    ("POST", "/generate", '{"prompt": "x", "max_new_tokens": -5}', 400),
    ("POST", "/generate", '{"prompt": "x", "max_new_tokens": 99999}', 400),
    ("POST", "/generate", '{"prompt": "x", "temperature": -2}', 400),
    ("POST", "/generate", '{"prompt": "x", "top_p": 0}', 400),
    ("POST", "/generate", '{"prompt": "x", "top_k": 2.5}', 400),
    ("POST", "/generate", '{"prompt": "x", "repetition_penalty": 0}', 400),
    ("POST", "/generate", '{"prompt": "x", "seed": "7"}', 400),
    ("POST", "/generate", '{"prompt": "x", "stop": ["a","b","c","d","e","f","g","h","i"]}', 400),
    ("POST", "/generate", '{"prompt": "x", "top_logprobs": 50}', 400),
    ("POST", "/generate", '{"prompt": "x", "attention": "last_row"}', 400),
    ("POST", "/generate", '{"prompt": "x", "model_id": "../../etc/passwd"}', 400),
    ("POST", "/generate", '{"prompt": "x", "model_id": "/abs"}', 400),
    ("POST", "/generate", '{"prompt": "x", "model_id": "nobody/none"}', 404),
    ("POST", "/generate", '{"prompt": "' + "word " * 3000 + '", "max_new_tokens": 10}', 400),
    ("POST", "/generate", '{"messages": [{"role": "user", "content": "x"}]}', 400),
    ("POST", "/generate/stream", '{"prompt": "x", "temperature": "hot"}', 400),
    ("POST", "/generate/stream", '{"prompt": "x", "model_id": "nobody/none"}', 404),
    ("POST", "/tokenize", '{"prompt": null}', 400),
    ("POST", "/tokenize", '{"prompt": "x", "add_special_tokens": "yes"}', 400),
    ("POST", "/detokenize", '{"token_ids": [999999]}', 400),
    ("POST", "/detokenize", '{"token_ids": "1,2"}', 400),
    ("POST", "/inspect", '{"prompt": "x", "include": ["everything"]}', 400),
    ("POST", "/inspect", '{"prompt": "x", "layers": [99], "include": ["logit_lens"]}', 400),
    ("POST", "/inspect", '{"prompt": ""}', 400),
    ("POST", "/inspect", '{"prompt": "' + "word " * 2000 + '"}', 413),
    ("POST", "/generate", '{"prompt": "' + "x" * (1024 * 1024) + '"}', 413),
    ("GET", "/models/nobody/none/config", None, 404),
    ("DELETE", "/models/never-loaded", None, 404),
    ("GET", "/no/such/endpoint", None, 404),
    ("PUT", "/generate", "{}", 405),
]


def test_bad_inputs_get_their_documented_4xx_and_the_server_serves_on(server):
    for method, path, body, status in BAD_INPUTS:
        response = requests.request(
            method,
            server.url(path),
            data=body,
            timeout=60,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == status, (method, path, response.text[:200])
        assert isinstance(response.json()["error"], str)
    assert len(BAD_INPUTS) >= 30
    good = requests.post(
        server.url("/generate"), json={"prompt": "Hi", "max_new_tokens": 3}, timeout=60
    )
    assert good.status_code == 200


def test_schemathesis_finds_no_server_errors_and_no_schema_drift(start_server):
    live = start_server(LLMVIZ_DEFAULT_MODEL="tiny-gpt2", LLMVIZ_MAX_NEW_TOKENS="8")
    paths = requests.get(live.url("/openapi.json"), timeout=10).json()["paths"]
    assert {
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/completions",
        "/v1/chat/completions",
    } <= set(paths)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        live.url("/openapi.json"),
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples",
        "40",
        "--request-timeout",
        "60",
        "--seed",
        "20261126",
        # Hypothesis's health checks time the generation of inputs, not the server; on a
        # busy 2-core machine /v1's large bodies sometimes trip `too_slow`.
        "--suppress-health-check",
        "all",
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Server error" not in result.stdout
    assert requests.get(live.url("/health"), timeout=5).ok
