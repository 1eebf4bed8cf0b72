"""Ray Serve (deploy/ray/) against gunicorn on one machine: memory per replica, the latency
Serve's proxy adds, and how requests for two models spread over replicas.

1. Latency: gunicorn (one gevent worker) and a one-replica Serve deployment on a one-node
   Ray cluster (two CPUs), both on loopback, both serving `llmviz/shakespeare` with the same
   number of torch threads (`--threads`, 1 by default: OMP_NUM_THREADS for both, and
   `num_cpus` for the replica). Streams alternate between the two, one at a time: time to
   first token and the gaps between tokens, as the client sees them; `/health` too. (With
   two threads each on this 2-core machine, other load on it (the idle Ray cluster's own
   processes, or anything else) slowed gunicorn's decoding steps far more than the
   replica's, and the comparison measured that rather than the proxy.)
2. Spread: two replicas (`num_cpus: 1` each), requests for `llmviz/shakespeare` and
   `llmviz/nano-sort` alternating, first with the `serve_multiplexed_model_id` header,
   then (on fresh replicas) without it: which replica served each model, what each holds,
   and each replica's resident memory.

Runs itself inside network and PID namespaces of its own (root, `unshare`, `ip`), as
tests/live/test_ray_serve.py does. Not run in CI. From the repository root:
    .venv/bin/python -m bench.ray_serve [--streams 30] [--tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import REPO, LiveServer, median
from tests.support.ray_fleet import NAMESPACE_MARK, RayFleet, isolated
from tests.support.sse_client import SSEEvent, stream_events

SHAKESPEARE, NANO = "llmviz/shakespeare", "llmviz/nano-sort"
HEADER = "serve_multiplexed_model_id"
SETTINGS = {"LLMVIZ_DEFAULT_MODEL": SHAKESPEARE, "HF_HUB_OFFLINE": "1"}


def timed_stream(url: str, tokens: int, headers: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first token, median seconds between tokens) of one stream."""
    body = {"model_id": SHAKESPEARE, "prompt": "ROMEO:", "max_new_tokens": tokens}
    body.update(temperature=0, ignore_eos=True, return_full_text=False)
    started = time.perf_counter()
    arrivals = []
    with requests.post(url, json=body, headers=headers, stream=True, timeout=120) as response:
        response.raise_for_status()
        for event in stream_events(response):
            if isinstance(event, SSEEvent):
                arrivals.append(time.perf_counter())
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    return arrivals[0] - started, median(gaps)


def health_ms(url: str, times: int = 50) -> float:
    """Median milliseconds of GET /health."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        requests.get(url, timeout=10).raise_for_status()
        spent.append(time.perf_counter() - started)
    return median(spent) * 1000


def rss_mib(pid: int) -> float:
    """Resident MiB of a process."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def latency(streams: int, tokens: int, threads: int) -> dict[str, Any]:
    """Phase 1: gunicorn and one Serve replica, streams alternating."""
    same = {"OMP_NUM_THREADS": str(threads)}
    fleet = RayFleet({**SETTINGS, **same}, nodes=1, cpus_per_node=2)
    fleet.deployment = {"num_replicas": 1, "ray_actor_options": {"num_cpus": threads}}
    with LiveServer({"LLMVIZ_DEFAULT_MODEL": SHAKESPEARE, **same}) as gunicorn:
        try:
            fleet.start()
            urls = {"gunicorn": gunicorn.url("/generate/stream")}
            urls["serve"] = fleet.url("/generate/stream")
            for url in urls.values():  # load and warm up
                for _ in range(3):
                    timed_stream(url, tokens, {HEADER: SHAKESPEARE})
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
            for i in range(streams):
                order = list(urls) if i % 2 == 0 else list(reversed(urls))
                for name in order:
                    runs[name].append(timed_stream(urls[name], tokens, {HEADER: SHAKESPEARE}))
            figures: dict[str, Any] = {"streams": streams, "tokens": tokens, "threads": threads}
            for name, measured in runs.items():
                figures[f"{name}_ttft_ms"] = median([t for t, _ in measured]) * 1000
                figures[f"{name}_per_token_ms"] = median([g for _, g in measured]) * 1000
            figures["gunicorn_health_ms"] = health_ms(gunicorn.url("/health"))
            figures["serve_health_ms"] = health_ms(fleet.url("/health"))
            figures["gunicorn_worker_rss_mib"] = rss_mib(gunicorn.worker_pids()[0])
            figures["serve_replica_rss_mib"] = [rss_mib(p) for p in fleet.replica_rss()]
            figures["ray_node_rss_mib"] = _namespace_rss_mib(exclude={gunicorn.proc.pid})
            return figures
        finally:
            fleet.stop()


def spread(requests_per_model: int) -> dict[str, Any]:
    """Phase 2: two replicas, two models, with the routing header and then without."""
    fleet = RayFleet(dict(SETTINGS), nodes=1, cpus_per_node=2)
    fleet.deployment = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}}
    try:
        fleet.start()
        with_header = _spread_once(fleet, requests_per_model, routed=True)
        fleet.deploy(LLMVIZ_BENCH_ROUND="without-header")  # fresh replicas, empty caches
        without = _spread_once(fleet, requests_per_model, routed=False)
        return {"with_header": with_header, "without_header": without}
    finally:
        fleet.stop()


def _spread_once(fleet: RayFleet, per_model: int, routed: bool) -> dict[str, Any]:
    """Alternate /generate requests for the two models; what each replica then holds."""
    for i in range(per_model * 2):
        model_id = (SHAKESPEARE, NANO)[i % 2]
        body = {"model_id": model_id, "prompt": "CBABBC" if model_id == NANO else "ROMEO:"}
        body.update(max_new_tokens=6, temperature=0)
        headers = {HEADER: model_id} if routed else {}
        requests.post(
            fleet.url("/generate"), json=body, headers=headers, timeout=120
        ).raise_for_status()
    replicas: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(replicas) < 2 and time.monotonic() < deadline:  # unrouted: Serve picks
        listing = requests.get(fleet.url("/models"), timeout=10).json()
        jobs = {m["model_id"]: m["completed_jobs"] for m in listing["loaded"]}
        replicas[listing["served_by"]["ray"]["replica_id"]] = {
            "completed_jobs": jobs,
            "rss_mib": round(rss_mib(listing["served_by"]["pid"])),
        }
    return replicas


def _namespace_rss_mib(exclude: set[int]) -> float:
    """Resident MiB of every process in this namespace but this one and `exclude`'s trees."""
    total = 0.0
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if pid == os.getpid() or pid in exclude or int(stat[1]) in exclude:
                continue
            total += rss_mib(pid)
        except (OSError, ValueError, IndexError):
            continue
    return total


def main() -> None:
    """Re-run inside namespaces of its own, then measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=30, help="streams per server")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--per-model", type=int, default=10, help="spread: requests per model")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.environ.get(NAMESPACE_MARK) != "1":
        command = isolated(sys.executable, "-m", "bench.ray_serve", *sys.argv[1:])
        sys.exit(subprocess.run(command, cwd=REPO).returncode)
    load_before = os.getloadavg()[0]
    figures = {
        "latency": latency(args.streams, args.tokens, args.threads),
        "spread": spread(args.per_model),
    }
    # Anything else running on the machine moves these figures: say how busy it was.
    figures["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for phase, values in figures.items():
        print(f"== {phase}")
        for key, value in values.items():
            shown = f"{value:.2f}" if isinstance(value, float) else json.dumps(value)
            print(f"{key:28} {shown}")


if __name__ == "__main__":
    main()
