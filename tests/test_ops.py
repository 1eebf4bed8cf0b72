"""Production operation: keys, limits, lifecycle, metrics, logs, shutdown, schema."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from tests.server import REPO, wait_for
from tests.sse_client import SSEEvent, parse, stream_events
from tests.tiny_models import save_gpt2

KEY = "s3cret-key-0123"

# (method, path, body) for every endpoint.
ENDPOINTS = [
    ("GET", "/models", None),
    ("GET", "/models/tiny-gpt2/config", None),
    ("GET", "/models/config?model_id=tiny-gpt2", None),
    ("DELETE", "/models/tiny-llama", None),
    ("POST", "/tokenize", {"prompt": "Hi"}),
    ("POST", "/detokenize", {"token_ids": [40, 73]}),
    ("POST", "/generate", {"prompt": "Hi", "max_new_tokens": 2}),
    ("POST", "/generate/stream", {"prompt": "Hi", "max_new_tokens": 2}),
    ("POST", "/inspect", {"prompt": "Hi"}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.fixture
def keyed(model_root, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# operators\nfile-key-456\n\n")
    app = create_app(
        {
            "model_root": model_root,
            "default_model": "tiny-gpt2",
            "api_keys": (KEY, "other-key"),
            "api_keys_file": str(keys_file),
        }
    )
    return app.test_client()


def _call(client, method, path, body, headers):
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_auth_matrix(keyed, method, path, body):
    missing = _call(keyed, method, path, body, {})
    wrong = _call(keyed, method, path, body, {"Authorization": "Bearer nope"})
    not_bearer = _call(keyed, method, path, body, {"Authorization": f"Basic {KEY}"})
    for response in (missing, wrong, not_bearer):
        assert response.status_code == 401
        assert response.get_json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="llmviz"')
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    for key in (KEY, "other-key", "file-key-456"):
        right = _call(keyed, method, path, body, {"Authorization": f"Bearer {key}"})
        assert right.status_code in (200, 404), (path, right.get_data(as_text=True)[:200])


def test_health_and_preflight_need_no_key(keyed):
    assert keyed.get("/health").get_json() == {"ok": True}
    preflight = keyed.options(
        "/generate",
        headers={
            "Origin": "http://viz.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_keys_never_reach_the_logs(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    for key in (KEY, "wrong-k"):
        response = keyed.post(
            "/generate",
            json={"prompt": "Hi", "max_new_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        )
        response.close()  # the request log line is written when the response closes
    assert caplog.records, "the request log wrote nothing"
    assert all(
        KEY not in r.getMessage() and "wrong-k" not in r.getMessage() for r in caplog.records
    )


def test_docs_can_be_made_public(model_root):
    client = create_app({"model_root": model_root, "api_keys": (KEY,), "public_docs": True})
    client = client.test_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/models").status_code == 401


def test_unreadable_keys_file_stops_startup(model_root, tmp_path):
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS_FILE"):
        create_app({"model_root": model_root, "api_keys_file": str(tmp_path / "missing")})


def test_model_allowlist(model_root):
    client = create_app({"model_root": model_root, "model_allowlist": ("tiny-*",)}).test_client()
    assert (
        client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "x"}).status_code == 200
    )
    refused = client.post("/tokenize", json={"model_id": "slow-gpt2", "prompt": "x"})
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "model_not_allowed"
    assert client.post("/generate", json={"model_id": "gpt2", "prompt": "x"}).status_code == 403


# -- the live server --


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


def _metrics(live):
    text = requests.get(live.url("/metrics"), timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            values[key] = sample.value
    return values


def _value(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_right_across_two_workers(start_server):
    live = start_server(WEB_CONCURRENCY="2")
    body = {"model_id": "tiny-gpt2", "prompt": "Count me", "max_new_tokens": 5, "ignore_eos": True}
    prompt_tokens = requests.post(live.url("/tokenize"), json=body, timeout=60).json()["count"]
    before = _metrics(live)
    for _ in range(6):
        assert requests.post(live.url("/generate"), json=body, timeout=60).status_code == 200
    requests.post(live.url("/generate/stream"), json=body, timeout=60).close()
    wait_for(
        lambda: (
            _value(_metrics(live), "llmviz_generated_tokens_total", model="tiny-gpt2")
            - _value(before, "llmviz_generated_tokens_total", model="tiny-gpt2")
            == 35
        ),
        timeout=10,
        message="7 generations x 5 tokens",
    )
    after = _metrics(live)
    ok = {"endpoint": "/generate", "method": "POST", "status": "200"}
    assert (
        _value(after, "llmviz_requests_total", **ok) - _value(before, "llmviz_requests_total", **ok)
        == 6
    )
    assert (
        _value(after, "llmviz_prompt_tokens_total", model="tiny-gpt2")
        - _value(before, "llmviz_prompt_tokens_total", model="tiny-gpt2")
        == 7 * prompt_tokens
    )
    assert (
        _value(after, "llmviz_time_to_first_token_seconds_count", model="tiny-gpt2")
        - _value(before, "llmviz_time_to_first_token_seconds_count", model="tiny-gpt2")
        == 7
    )
    assert _value(after, "llmviz_request_duration_seconds_count", endpoint="/generate") >= 6
    assert _value(after, "llmviz_model_load_seconds_count", model="tiny-gpt2") >= 1
    assert ("llmviz_active_generations", ()) in after
    assert ("llmviz_loaded_models", ()) in after
    bad = {"endpoint": "/generate", "method": "POST", "status": "400"}
    requests.post(live.url("/generate"), data="{", timeout=10)
    assert (
        _value(_metrics(live), "llmviz_requests_total", **bad)
        - _value(after, "llmviz_requests_total", **bad)
        == 1
    )


@pytest.fixture(scope="module")
def big_root(tmp_path_factory):
    """A 42M-parameter GPT-2 (about 170 MB in float32): big enough to see in RSS."""
    root = tmp_path_factory.mktemp("big")
    save_gpt2(root / "big-gpt2", n_layer=6, n_embd=768, n_head=12, n_positions=512)
    save_gpt2(root / "tiny-gpt2")
    return root


def _rss_mb(live):
    pid = live.worker_pids()[0]
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_unload_frees_memory_after_finishing_its_stream(start_server, big_root):
    live = start_server(LLMVIZ_MODEL_ROOT=str(big_root), LLMVIZ_MAX_NEW_TOKENS="400")
    requests.post(live.url("/tokenize"), json={"model_id": "tiny-gpt2", "prompt": "x"}, timeout=60)
    idle = _rss_mb(live)
    body = {
        "model_id": "big-gpt2",
        "prompt": "Go",
        "max_new_tokens": 300,
        "temperature": 0,
        "ignore_eos": True,
        "details": True,
    }
    with requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=120) as r:
        events = stream_events(r)
        next(e for e in events if getattr(e, "event", "") == "token")  # weights in use now
        loaded = _rss_mb(live)
        assert loaded - idle > 120, f"loading moved RSS by {loaded - idle:.0f} MB only"
        unload = requests.delete(live.url("/models/big-gpt2"), timeout=10)
        assert unload.status_code == 200 and unload.json()["finishing"] == 1
        rest = [e for e in events if isinstance(e, SSEEvent)]
    tokens = [e for e in rest if e.event == "token"]
    assert len(tokens) == 299 and rest[-1].event == "done"  # it finished its work first
    names = [m["model_id"] for m in requests.get(live.url("/models"), timeout=5).json()["loaded"]]
    assert names == ["tiny-gpt2"]
    wait_for(
        lambda: _rss_mb(live) < idle + 0.2 * (loaded - idle),
        timeout=20,
        message=f"RSS back near {idle:.0f} MB (loaded: {loaded:.0f} MB)",
    )


def test_idle_models_are_unloaded_after_the_ttl(start_server):
    live = start_server(LLMVIZ_MODEL_TTL="1")
    requests.post(
        live.url("/generate"),
        json={"model_id": "tiny-gpt2", "prompt": "x", "max_new_tokens": 2},
        timeout=60,
    )
    wait_for(
        lambda: not requests.get(live.url("/models"), timeout=5).json()["loaded"],
        timeout=15,
        message="the idle model to be unloaded",
    )
    assert "LLMVIZ_MODEL_TTL" in live.log()
    again = requests.post(
        live.url("/tokenize"), json={"model_id": "tiny-gpt2", "prompt": "x"}, timeout=60
    )
    assert again.status_code == 200  # and it loads again on demand


def test_sigterm_finishes_short_streams_and_ends_long_ones_cleanly(start_server):
    live = start_server(GUNICORN_CMD_ARGS="--graceful-timeout 4", LLMVIZ_MAX_NEW_TOKENS="2000")
    long_body = {
        "model_id": "slow-gpt2",
        "prompt": "Long",
        "max_new_tokens": 2000,
        "temperature": 0,
        "ignore_eos": True,
    }
    short_body = {**long_body, "model_id": "tiny-gpt2", "max_new_tokens": 300, "details": True}
    for body in (long_body, short_body):
        requests.post(live.url("/generate"), json={**body, "max_new_tokens": 1}, timeout=60)
    results = {}
    long_stream = requests.post(
        live.url("/generate/stream"), json=long_body, stream=True, timeout=60
    )
    long_events = stream_events(long_stream)
    next(long_events)
    short = threading.Thread(
        target=lambda: results.update(
            short=requests.post(live.url("/generate/stream"), json=short_body, timeout=60).text
        )
    )
    short.start()
    live.proc.send_signal(signal.SIGTERM)
    rest = list(long_events)  # raises if the stream is cut off instead of ended
    short.join(timeout=30)
    assert rest[-1] == SSEEvent("error", rest[-1].data)
    assert json.loads(rest[-1].data)["code"] == "shutting_down"
    short_events = parse(results["short"])
    assert short_events[-1].event == "done"
    assert json.loads(short_events[-1].data)["finish_reason"] == "length"
    assert live.proc.wait(timeout=15) == 0
    log = live.log()
    assert "Traceback" not in log and "terminate called" not in log
    assert not live.worker_pids()


def test_openapi_describes_every_endpoint(client, app):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    routes = {rule.rule for rule in app.url_map.iter_rules()} - {"/docs/assets/<path:filename>"}
    documented = {p.replace("{model_id}", "<path:model_id>") for p in document["paths"]}
    assert routes - documented <= {"/openapi.json", "/docs"}
    generate = document["paths"]["/generate"]["post"]
    assert set(generate["responses"]) >= {"200", "400", "404", "413", "500", "503"}
    schema = document["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["top_p"]["maximum"] == 1  # from the pydantic model itself
    page = client.get("/docs")
    assert b"swagger-ui" in page.data
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_schemathesis_finds_no_server_errors_and_no_schema_drift(start_server):
    live = start_server(LLMVIZ_DEFAULT_MODEL="tiny-gpt2", LLMVIZ_MAX_NEW_TOKENS="8")
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


def test_health_answers_while_a_model_loads(start_server, big_root):
    # bfloat16: every weight is converted while loading, so the load takes a while.
    live = start_server(LLMVIZ_MODEL_ROOT=str(big_root), LLMVIZ_DTYPE="bfloat16")
    requests.post(live.url("/tokenize"), json={"model_id": "tiny-gpt2", "prompt": "x"}, timeout=60)
    loader = threading.Thread(
        target=lambda: requests.post(
            live.url("/tokenize"), json={"model_id": "big-gpt2", "prompt": "x"}, timeout=120
        )
    )
    loader.start()
    wait_for(
        lambda: "big-gpt2" in _models(live)["loading"],
        timeout=30,
        interval=0.005,
        message="the load to start",
    )
    latencies = []
    while "big-gpt2" in _models(live)["loading"]:
        started = time.perf_counter()
        assert requests.get(live.url("/health"), timeout=5).ok
        latencies.append(time.perf_counter() - started)
    loader.join(timeout=60)
    assert latencies, "the load ended before /health could be probed"
    assert max(latencies) < 0.25, f"slowest /health during the load: {max(latencies):.3f}s"
    assert "big-gpt2" in [m["model_id"] for m in _models(live)["loaded"]]


def _models(live):
    return requests.get(live.url("/models"), timeout=5).json()
