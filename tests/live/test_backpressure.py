"""A full queue's Retry-After on the real server: the queued work over the measured pace."""

from __future__ import annotations

import threading
import time

import requests

from tests.support.server import wait_for


def test_a_long_queue_asks_for_a_longer_wait(start_server):
    # One generation at a time and six waiting: the seventh request finds the queue full.
    live = start_server(LLMVIZ_MAX_BATCH="1", LLMVIZ_MAX_QUEUE="6", LLMVIZ_MAX_NEW_TOKENS="8000")
    body = {"model_id": "slow-gpt2", "prompt": "Pace", "max_new_tokens": 120}
    body.update(temperature=0, ignore_eos=True)
    assert requests.post(live.url("/generate"), json=body, timeout=60).ok  # loaded
    started = time.perf_counter()
    assert requests.post(live.url("/generate"), json=body, timeout=60).ok
    # Generations of about 1 s whatever the machine: six waiting are over 5 s of work, and
    # the seven requests have a second to arrive before the first ends (0.4 s was a race on
    # a loaded machine: the queue never held six at once).
    scale = 1.0 / (time.perf_counter() - started)
    body["max_new_tokens"] = min(8000, max(120, round(120 * scale)))
    for _ in range(3):  # the worker's pace: a few generations of this size, one at a time
        assert requests.post(live.url("/generate"), json=body, timeout=60).ok
    answers: list[int] = []
    busy = [
        threading.Thread(
            target=lambda: answers.append(
                requests.post(live.url("/generate"), json=body, timeout=120).status_code
            )
        )
        for _ in range(7)
    ]
    for thread in busy:
        thread.start()
    wait_for(
        lambda: live.stats("slow-gpt2")["queued"] == 6,
        timeout=30,
        interval=0.005,
        message="a full queue",
    )
    refused = requests.post(live.url("/generate"), json=body, timeout=30)
    for thread in busy:
        thread.join(timeout=120)
    print(
        f"\nfull queue of 6 generations of {body['max_new_tokens']} tokens: "
        f"Retry-After {refused.headers.get('Retry-After')}"
    )
    assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
    # Six generations wait, each as long as the three measured: several seconds, not 1.
    assert 1 < int(refused.headers["Retry-After"]) <= 30
    assert answers == [200] * 7  # what was admitted still finished
