"""Continuous batching on the real gunicorn server."""

from __future__ import annotations

import threading

import requests

from tests.support.server import wait_for
from tests.support.sse_client import message_data, stream_events


def _greedy(model_id, prompt, tokens):
    return {
        "model_id": model_id,
        "prompt": prompt,
        "max_new_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


def test_concurrent_streams_share_forward_passes_and_keep_their_text(server):
    prompts = ["A", "A somewhat longer prompt here", "Mid length one", "B"]
    bodies = [_greedy("slow-gpt2", prompt, 200) for prompt in prompts]
    alone = [server.generate(**b) for b in bodies]
    before = server.stats("slow-gpt2")
    results = {}
    threads = [
        threading.Thread(target=lambda i=i, b=b: results.update({i: server.stream_text(**b)}))
        for i, b in enumerate(bodies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = server.stats("slow-gpt2")
    steps = after["decode_steps"] - before["decode_steps"]
    assert after["generated_tokens"] - before["generated_tokens"] == 800
    # One at a time would take 4 x 199 steps; batched, the rows share them.
    assert steps < 2 * 199, f"{steps} decode steps for 4 concurrent 200-token streams"
    # Padding to a common length does not change what each row generates.
    assert [results[i] for i in range(4)] == alone


def test_a_finished_request_leaves_the_batch_at_once(server):
    long_body = _greedy("slow-gpt2", "Long", 1500)
    requests.post(server.url("/generate"), json={**long_body, "max_new_tokens": 1}, timeout=60)
    before = server.stats("slow-gpt2")["generated_tokens"]
    with requests.post(
        server.url("/generate/stream"), json=long_body, stream=True, timeout=120
    ) as long_stream:
        events = stream_events(long_stream)
        next(events)
        wait_for(lambda: server.stats("slow-gpt2")["active"] == 1, 10, message="long job")
        short = requests.post(
            server.url("/generate"), json=_greedy("slow-gpt2", "Short", 20), timeout=60
        )
        assert short.status_code == 200
        # The short one leaves right after its last step; the long one still runs.
        wait_for(lambda: server.stats("slow-gpt2")["active"] == 1, 2, message="it to leave")
        assert message_data(events)  # the long stream carries on to its end
    wait_for(lambda: server.stats("slow-gpt2")["active"] == 0, 10, message="the end")
    assert server.stats("slow-gpt2")["generated_tokens"] - before == 1500 + 20


def test_max_batch_limits_rows_and_queues_the_rest(start_server):
    live = start_server(LLMVIZ_MAX_BATCH="2", LLMVIZ_MAX_NEW_TOKENS="2000")
    body = _greedy("slow-gpt2", "Q", 1200)
    requests.post(live.url("/generate"), json={**body, "max_new_tokens": 1}, timeout=60)
    streams = [
        requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=120)
        for _ in range(3)
    ]
    try:
        wait_for(
            lambda: (
                (live.stats("slow-gpt2")["active"], live.stats("slow-gpt2")["queued"]) == (2, 1)
            ),
            timeout=20,
            message="two rows running and one waiting",
        )
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: live.stats("slow-gpt2")["active"] == 0, timeout=20, message="cancel")


def test_a_long_prompt_joins_running_streams_in_chunks_and_all_keep_their_text(server):
    running = [_greedy("slow-gpt2", prompt, 300) for prompt in ("First runner", "Second")]
    # Far longer than a prefill chunk (LLMVIZ_PREFILL_CHUNK): it goes in between their steps.
    joiner = _greedy("slow-gpt2", "a long prompt that joins late " * 30, 20)
    answers = [
        requests.post(server.url("/generate"), json=b, timeout=120) for b in (*running, joiner)
    ]
    assert [a.status_code for a in answers] == [200] * 3, answers[-1].text
    alone = [a.json()["text"] for a in answers]
    results = {}
    threads = [
        threading.Thread(target=lambda i=i, b=b: results.update({i: server.stream_text(**b)}))
        for i, b in enumerate(running)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: server.stats("slow-gpt2")["active"] == 2, 20, message="two streams")
    steps = server.stats("slow-gpt2")["decode_steps"]
    wait_for(lambda: server.stats("slow-gpt2")["decode_steps"] > steps + 3, 20, message="steps")
    joined = requests.post(server.url("/generate"), json=joiner, timeout=120).json()
    during = server.stats("slow-gpt2")["decode_steps"] - steps
    for thread in threads:
        thread.join(timeout=120)
    assert [results[0], results[1], joined["text"]] == alone
    # The runners kept stepping while the joiner's prompt went in and it made its 20 tokens.
    assert during > 20
