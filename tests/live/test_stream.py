"""POST /generate/stream on the real gunicorn gevent server."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest
import requests

from tests.support.server import wait_for
from tests.support.sse_client import SSEEvent, message_data, parse, stream_events

PROMPTS = [
    "Hello world",
    "Emoji 🦙🤖 and CJK 你好，世界",
    "line one\nline two\n\n  double  spaces",
]


def _post_stream(server, body, **kwargs):
    return requests.post(
        server.url("/generate/stream"), json=body, stream=True, timeout=120, **kwargs
    )


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_joined_stream_equals_generate(server, model_id, prompt):
    body = {"model_id": model_id, "prompt": prompt, "max_new_tokens": 48, "temperature": 0}
    expected = server.generate(**body)
    response = _post_stream(server, body)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    data = message_data(parse(response.content.decode("utf-8")))
    assert data[0] == prompt  # the echo, as one event
    assert len(data) >= 2
    assert "".join(data) == expected


def test_stream_without_echo(server):
    body = {"prompt": "Hello", "max_new_tokens": 10, "temperature": 0, "return_full_text": False}
    expected = server.generate(**body)
    events = parse(_post_stream(server, body).content.decode())
    assert "".join(message_data(events)) == expected
    assert all(isinstance(e, SSEEvent) and e.event == "message" for e in events)


def test_tokens_arrive_while_the_generation_is_still_running(server):
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 2000}
    body.update(temperature=0, ignore_eos=True)
    with _post_stream(server, body) as response:
        events = stream_events(response)
        assert next(events).data == "Hi"
        first_token = next(e for e in events if isinstance(e, SSEEvent))
        assert first_token.event == "message"
        stats = server.stats("slow-gpt2")
        assert stats["active"] == 1
        assert stats["generated_tokens"] < 1000  # not buffered until the end


def test_disconnect_stops_the_generation(server):
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 2000}
    body.update(temperature=0, ignore_eos=True)
    requests.post(server.url("/generate"), json={**body, "max_new_tokens": 1}, timeout=60)
    before = server.stats("slow-gpt2")["generated_tokens"]
    threads = server.worker_threads()
    response = _post_stream(server, body)
    events = stream_events(response)
    for _ in range(4):
        next(events)
    response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # the reader goes away
    response.close()
    wait_for(lambda: server.stats("slow-gpt2")["active"] == 0, timeout=10, message="job to end")
    made = server.stats("slow-gpt2")["generated_tokens"] - before
    assert made < 200, f"{made} tokens were generated for a reader that left after 3"
    cpu_before = server.worker_cpu_seconds()
    time.sleep(1.0)  # a measurement window, not a wait for a condition
    assert server.worker_cpu_seconds() - cpu_before < 0.3
    assert server.stats("slow-gpt2")["generated_tokens"] - before == made
    assert server.worker_threads() == threads  # the request left no thread behind


def test_unknown_model_and_bad_input_are_plain_json(server):
    missing = requests.post(
        server.url("/generate/stream"), json={"model_id": "nope/nope", "prompt": "x"}, timeout=30
    )
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("application/json")
    bad = requests.post(server.url("/generate/stream"), json={"prompt": 3}, timeout=30)
    assert bad.status_code == 400 and "prompt" in bad.json()["error"]


def test_error_after_the_stream_started_is_an_error_event(server, model_root):
    # A config that loads but no weights: found only once the stream has begun.
    folder = model_root / "weightless"
    if not folder.exists():
        shutil.copytree(model_root / "tiny-gpt2", folder)
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
    response = _post_stream(server, {"model_id": "weightless", "prompt": "Hi"})
    assert response.status_code == 200
    events = parse(response.content.decode())
    assert events[-1].event == "error"
    assert isinstance(json.loads(events[-1].data)["error"], str)


def test_concurrent_streams_all_progress(server):
    bodies = [
        {"model_id": "slow-gpt2", "prompt": "One", "max_new_tokens": 300},
        {"model_id": "slow-gpt2", "prompt": "Two", "max_new_tokens": 300},
        {"model_id": "tiny-llama", "prompt": "Three", "max_new_tokens": 300},
    ]
    for body in bodies:
        body.update(temperature=0, ignore_eos=True)
        requests.post(server.url("/generate"), json={**body, "max_new_tokens": 1}, timeout=60)
    first_token, finished = {}, {}

    # Record the arrival of each stream's second event (its first token) as it happens.
    def run_live(index, body):
        with _post_stream(server, body) as response:
            events = (e for e in stream_events(response) if isinstance(e, SSEEvent))
            next(events)  # the echo
            next(events)
            first_token[index] = time.monotonic()
            for _ in events:
                pass
        finished[index] = time.monotonic()

    threads = [threading.Thread(target=run_live, args=item) for item in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(finished) == 3
    # Every stream had produced a token before any of them finished.
    assert max(first_token.values()) < min(finished.values())
    assert requests.get(server.url("/health"), timeout=5).ok


def test_pings_while_waiting_and_no_heartbeat_timeout(start_server):
    live = start_server(
        LLMVIZ_MAX_BATCH="1",
        LLMVIZ_SSE_PING_SECONDS="0.1",
        LLMVIZ_MAX_NEW_TOKENS="2000",
        GUNICORN_CMD_ARGS="--timeout 2",
    )
    long_body = {"model_id": "slow-gpt2", "prompt": "A", "max_new_tokens": 1500}
    long_body.update(temperature=0, ignore_eos=True)
    requests.post(live.url("/generate"), json={**long_body, "max_new_tokens": 1}, timeout=60)
    with _post_stream(live, long_body) as first:
        first_events = stream_events(first)  # keep it: dropping it would close the connection
        next(first_events)
        wait_for(lambda: live.stats("slow-gpt2")["active"] == 1, timeout=10, message="job")
        # The only slot is taken: the second stream waits in the queue, kept alive by pings.
        second = _post_stream(live, {**long_body, "max_new_tokens": 5})
        events = parse(second.content.decode())
        assert "ping" in events
        assert len(message_data(events)) >= 2
        for _ in first_events:
            pass
    assert "WORKER TIMEOUT" not in live.log()


def test_full_queue_is_503_while_admitted_requests_finish(start_server):
    live = start_server(LLMVIZ_MAX_BATCH="1", LLMVIZ_MAX_QUEUE="1", LLMVIZ_MAX_NEW_TOKENS="2000")
    body = {"model_id": "slow-gpt2", "prompt": "A", "max_new_tokens": 800}
    body.update(temperature=0, ignore_eos=True)
    requests.post(live.url("/generate"), json={**body, "max_new_tokens": 1}, timeout=60)
    running = _post_stream(live, body)
    running_events = stream_events(running)
    next(running_events)
    wait_for(lambda: live.stats("slow-gpt2")["active"] == 1, timeout=10, message="running")
    waiting = _post_stream(live, {**body, "max_new_tokens": 3})
    wait_for(lambda: live.stats("slow-gpt2")["queued"] == 1, timeout=10, message="queued")
    refused = requests.post(live.url("/generate"), json=body, timeout=30)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert "LLMVIZ_MAX_QUEUE" in refused.json()["error"]
    assert len(message_data(running_events)) == 800  # the admitted requests still complete
    assert len(message_data(parse(waiting.content.decode()))) == 4
