"""Seeds, stop strings and streamed details on the real gunicorn server."""

from __future__ import annotations

import json
import threading

import requests

from tests.support.client import generate
from tests.support.sse_client import SSEEvent, parse

# -- seeds --


def _seeded(model_id="tiny-llama", seed=1234, **extra):
    body = {"model_id": model_id, "prompt": "Seeded:", "max_new_tokens": 40, "seed": seed}
    body.update(temperature=1.0, top_p=0.9, top_k=50, ignore_eos=True, **extra)
    return body


def test_seeded_runs_match_streamed_or_not_alone_or_in_company(server):
    body = _seeded()
    alone = server.generate(**body)
    assert server.stream_text(**body) == alone
    other_seed = requests.post(server.url("/generate"), json=_seeded(seed=99), timeout=120)
    assert other_seed.json()["text"] != alone  # the seed matters

    results, company = {}, []
    others = [_seeded(seed=s, max_new_tokens=200) for s in (1, 2)] + [
        _seeded("tiny-gpt2", seed=3, max_new_tokens=200),
        {**_seeded(seed=4, max_new_tokens=200), "temperature": 0.3, "stop": ["zzz"]},
    ]
    for other in others:
        company.append(threading.Thread(target=lambda o=other: server.stream_text(**o)))
    company.append(threading.Thread(target=lambda: results.update(s=server.stream_text(**body))))
    company.append(threading.Thread(target=lambda: results.update(g=server.generate(**body))))
    for thread in company:
        thread.start()
    for thread in company:
        thread.join(timeout=120)
    assert results == {"s": alone, "g": alone}


# -- stop strings --


def test_stop_string_ends_the_text_before_it(client, server):
    base = {"prompt": "Stop test:", "max_new_tokens": 60, "temperature": 0, "ignore_eos": True}
    base["return_full_text"] = False
    full = generate(client, **base)["text"]
    assert len(full) > 10
    stop = full[6:8]
    expected = full[: full.index(stop)]
    answer = generate(client, **base, stop=[stop, "never-there"], details=True)
    assert answer["text"] == expected
    assert answer["details"]["finish_reason"] == "stop"
    assert answer["details"]["generated_tokens"] < 60
    streamed = server.stream_text(**base, stop=[stop])
    assert streamed == expected


# -- streaming details --


def test_stream_details_events(server):
    body = {"model_id": "tiny-llama", "prompt": "Hi", "max_new_tokens": 8, "temperature": 0}
    body.update(ignore_eos=True, details=True, top_logprobs=2)
    expected = requests.post(server.url("/generate"), json=body, timeout=60).json()["details"]
    events = parse(requests.post(server.url("/generate/stream"), json=body, timeout=60).text)
    assert events[0] == SSEEvent("message", "Hi")
    tokens = [json.loads(e.data) for e in events if isinstance(e, SSEEvent) and e.event == "token"]
    done = json.loads(events[-1].data)
    assert events[-1].event == "done"
    assert [t["id"] for t in tokens] == [t["id"] for t in expected["tokens"]]
    assert [t["text"] for t in tokens] == [t["text"] for t in expected["tokens"]]
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert done["finish_reason"] == "length"
    assert done["generated_tokens"] == len(tokens) == 8
    assert set(done["timing"]) == set(expected["timing"])
