"""llmviz-server on a two-node Ray Serve cluster (deploy/ray/), deployed with Ray's CLI.

Not collected on its own (not `test_*.py`): tests/live/test_ray_serve.py runs this module
with pytest inside network and PID namespaces of its own, where Ray may bind loopback only
and its fixed ports are free. Each node has one CPU and one replica.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import time
from typing import Any

import pytest
import requests

from tests.support.ray_fleet import NAMESPACE_MARK, RayFleet
from tests.support.server import wait_for
from tests.support.sse_client import message_data, parse, stream_events

KEY = "ray-fleet-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 65536  # LLMVIZ_MAX_BODY_BYTES here


def routed(model_id: str) -> dict[str, str]:
    """The key, and the header Serve routes a request for `model_id` by."""
    return {**AUTH, "serve_multiplexed_model_id": model_id}


@pytest.fixture(scope="module")
def fleet(model_root):
    if os.environ.get(NAMESPACE_MARK) != "1":
        pytest.skip("runs inside its own namespaces: tests/live/test_ray_serve.py starts it")
    settings = {
        "LLMVIZ_MODEL_ROOT": str(model_root),
        "LLMVIZ_DEFAULT_MODEL": "tiny-gpt2",
        "LLMVIZ_MAX_NEW_TOKENS": "2000",
        "LLMVIZ_API_KEYS": KEY,
        "LLMVIZ_MAX_BODY_BYTES": str(LIMIT),
        "HF_HUB_OFFLINE": "1",
    }
    cluster = RayFleet(settings)
    try:
        cluster.start()
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def models_at(fleet: RayFleet, headers: dict[str, str]) -> dict[str, Any]:
    """GET /models: what the replica that Serve picked holds, and which one it is."""
    answer = requests.get(fleet.url("/models"), headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def stats(fleet: RayFleet, model_id: str) -> dict[str, Any]:
    """`model_id`'s counters, from the replica that Serve routes `model_id` to."""
    listing = models_at(fleet, routed(model_id))
    found = [m for m in listing["loaded"] if m["model_id"] == model_id]
    assert found, f"{model_id} is not on {listing['served_by']}"
    return {**found[0], "replica": listing["served_by"]["ray"]["replica_id"]}


def settled_on(fleet: RayFleet, model_id: str) -> str | None:
    """The replica that six requests routed by `model_id` in a row reached and that holds it,
    or None while Serve has not learnt where it is (they spread over both replicas)."""
    seen = set()
    for _ in range(6):
        listing = models_at(fleet, routed(model_id))
        if model_id not in {m["model_id"] for m in listing["loaded"]}:
            return None
        seen.add(listing["served_by"]["ray"]["replica_id"])
    return seen.pop() if len(seen) == 1 else None


def place(fleet: RayFleet, model_id: str) -> str:
    """Load `model_id` through a request routed by it; the replica Serve then routes it to."""
    body = {"model_id": model_id, "prompt": "Hi", "max_new_tokens": 4}
    answer = requests.post(fleet.url("/generate"), json=body, headers=routed(model_id), timeout=60)
    assert answer.status_code == 200, answer.text
    return wait_for(
        lambda: settled_on(fleet, model_id),
        timeout=30,
        interval=0.1,
        message=f"Serve to route {model_id} to the replica that loaded it",
    )


def test_both_nodes_answer_and_say_who_they_are(fleet):
    seen: dict[str, str] = {}

    def both() -> bool:
        ray = models_at(fleet, AUTH)["served_by"]["ray"]
        assert ray["application"] == "llmviz" and ray["deployment"] == "llmviz"
        seen[ray["replica_id"]] = ray["node_id"]
        return len(seen) == 2

    wait_for(both, timeout=30, interval=0.05, message="answers from both replicas")
    assert len(set(seen.values())) == 2, f"both replicas on one node: {seen}"
    print(f"\nreplicas and their nodes: {seen}")


def test_two_models_go_to_two_replicas_and_stay_there(fleet):
    placed = {model_id: place(fleet, model_id) for model_id in ("tiny-gpt2", "slow-gpt2")}
    print(f"\nmodels placed: {placed}")
    assert placed["tiny-gpt2"] != placed["slow-gpt2"]
    # Later requests for each go to its replica, which alone holds it.
    before = {m: stats(fleet, m)["completed_jobs"] for m in placed}
    for _ in range(4):
        for model_id in placed:
            body = {"model_id": model_id, "prompt": "Hi", "max_new_tokens": 2}
            requests.post(
                fleet.url("/generate"), json=body, headers=routed(model_id)
            ).raise_for_status()
    for model_id, replica in placed.items():
        now = stats(fleet, model_id)
        assert now["replica"] == replica and now["completed_jobs"] == before[model_id] + 4
        other = next(r for r in placed.values() if r != replica)
        listing = models_at(fleet, routed("tiny-gpt2" if model_id == "slow-gpt2" else "slow-gpt2"))
        assert listing["served_by"]["ray"]["replica_id"] == other
        assert model_id not in {m["model_id"] for m in listing["loaded"]}


def test_a_request_without_the_header_still_works(fleet):
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 3, "temperature": 0}
    answer = requests.post(fleet.url("/generate"), json=body, headers=AUTH, timeout=60)
    assert answer.status_code == 200 and answer.json()["text"].startswith("Hi")


def _timed_stream(url: str, body: dict, headers: dict) -> dict:
    """Read a stream, noting when each event arrives and how many came in each read."""
    started = time.perf_counter()
    arrivals, reads, pending = [], [], b""
    with requests.post(url, json=body, headers=headers, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        for chunk in response.iter_content(chunk_size=None):
            now = time.perf_counter()
            pending += chunk
            events = pending.count(b"\n\n")
            pending = pending[pending.rfind(b"\n\n") + 2 :] if events else pending
            arrivals += [now] * events
            reads.append(events)
    tokens = arrivals[1:]  # the first event is the prompt's echo
    first, last = tokens[0], tokens[-1]
    return {
        "events": len(tokens),
        "duration_s": last - started,
        "spread_s": last - first,
        "half_at": (tokens[len(tokens) // 2] - first) / (last - first),
        "largest_read": max(reads) / len(arrivals),
    }


def test_streams_are_live_through_serve(fleet):
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 600}
    body.update(temperature=0, ignore_eos=True)
    timed = _timed_stream(fleet.url("/generate/stream"), body, routed("slow-gpt2"))
    print(f"\nstream of 600 tokens through Serve: {timed}")
    assert timed["events"] > 500
    # Buffered, the tokens would come in a lump at the end.
    assert timed["spread_s"] > 0.6 * timed["duration_s"]
    assert 0.15 < timed["half_at"] < 0.85
    assert timed["largest_read"] < 0.1


def test_a_client_that_leaves_stops_the_generation_and_health_stays_fast(fleet):
    place(fleet, "slow-gpt2")
    body = {"model_id": "slow-gpt2", "prompt": "Hi", "max_new_tokens": 2000}
    body.update(temperature=0, ignore_eos=True)
    made_before = stats(fleet, "slow-gpt2")["generated_tokens"]
    response = requests.post(
        fleet.url("/generate/stream"), json=body, headers=routed("slow-gpt2"), stream=True
    )
    events = stream_events(response)
    for _ in range(6):
        next(events)
    assert stats(fleet, "slow-gpt2")["active"] == 1
    health = []
    for _ in range(20):  # while the stream runs, on either replica
        started = time.perf_counter()
        assert requests.get(fleet.url("/health"), timeout=5).json() == {"ok": True}
        health.append(time.perf_counter() - started)
    response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # the reader goes away
    response.close()
    left = time.perf_counter()
    wait_for(
        lambda: stats(fleet, "slow-gpt2")["active"] == 0,
        timeout=10,
        interval=0.02,
        message="the generation to stop",
    )
    stopped_after = time.perf_counter() - left
    made = stats(fleet, "slow-gpt2")["generated_tokens"] - made_before
    print(
        f"\n/health during a stream: median {statistics.median(health) * 1000:.1f} ms, "
        f"max {max(health) * 1000:.1f} ms; the client left -> idle in "
        f"{stopped_after * 1000:.0f} ms, {made} tokens made"
    )
    assert statistics.median(health) < 0.1 and max(health) < 1.0
    assert stopped_after < 2.0
    assert made < 1000, f"{made} tokens were made for a reader that left after 5"


def test_inspect_live_attention_and_v1_work(fleet):
    headers = routed("tiny-gpt2")
    what = {"model_id": "tiny-gpt2", "prompt": "Hello world", "attention": {"format": "dense"}}
    what["include"] = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]
    inspected = requests.post(fleet.url("/inspect"), json=what, headers=headers, timeout=60)
    assert inspected.status_code == 200, inspected.text
    answer = inspected.json()
    assert answer["attention"]["weights"]["shape"][-1] == len(answer["token_ids"])
    assert answer["logit_lens"] is not None and answer["resid_norms"] is not None
    body = {"model_id": "tiny-gpt2", "prompt": "Hi", "max_new_tokens": 5, "details": True}
    body.update(temperature=0, ignore_eos=True, attention="last_row")
    live = requests.post(fleet.url("/generate/stream"), json=body, headers=headers, timeout=60)
    tokens = [e for e in parse(live.text) if getattr(e, "event", "") == "token"]
    assert len(tokens) == 5 and all('"attention"' in e.data for e in tokens)
    v1 = {"model": "tiny-gpt2", "prompt": "Hi", "max_tokens": 5, "stream": True}
    chunks = requests.post(fleet.url("/v1/completions"), json=v1, headers=headers, timeout=60)
    assert chunks.status_code == 200
    assert message_data(parse(chunks.text))[-1] == "[DONE]"
    listed = requests.get(fleet.url("/v1/models"), headers=AUTH, timeout=10).json()
    assert "tiny-gpt2" in {m["id"] for m in listed["data"]}


def test_keys_limits_cors_and_request_ids_are_the_apps(fleet):
    refused = requests.post(fleet.url("/tokenize"), json={"prompt": "Hi"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(fleet.url("/health"), timeout=10).status_code == 200  # no key needed
    too_big = requests.post(fleet.url("/tokenize"), data=b" " * LIMIT + b"{}", headers=AUTH)
    assert too_big.status_code == 413 and too_big.json()["code"] == "payload_too_large"
    preflight = requests.options(
        fleet.url("/generate"),
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, serve_multiplexed_model_id",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert "serve_multiplexed_model_id" in preflight.headers["Access-Control-Allow-Headers"]
    sent = requests.post(
        fleet.url("/tokenize"),
        json={"prompt": "Hi"},
        headers={**AUTH, "X-Request-ID": "client-7.a"},
    )
    assert sent.ok and sent.raw.headers.getlist("X-Request-ID") == ["client-7.a"]  # once


def test_metrics_are_exported_per_replica_the_ray_way(fleet):
    replicas = set()

    def both_replicas() -> bool:
        for line in fleet.scrape().splitlines():
            if line.startswith("ray_llmviz_requests_total{"):
                replicas.add(re.search(r'replica="([^"]+)"', line)[1])
        return len(replicas) == 2

    wait_for(both_replicas, timeout=60, interval=1, message="both replicas' llmviz metrics")
    text = fleet.scrape()
    assert re.search(r'ray_llmviz_generated_tokens_total\{[^}]*model="slow-gpt2"', text)
    assert "ray_llmviz_time_to_first_token_seconds_bucket{" in text
    rss = fleet.replica_rss()
    print(f"\nreplica RSS: {[f'{size / 2**20:.0f} MiB' for size in rss.values()]}")
    assert len(rss) == 2
