"""app/ops/placement.py: which process answered, and under Ray Serve which replica."""

from __future__ import annotations

import os
import socket
import sys
from types import SimpleNamespace

from app.ops import placement


def test_outside_ray_it_is_the_host_and_pid(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray.serve", raising=False)
    assert placement.served_by() == {"host": socket.gethostname(), "pid": os.getpid(), "ray": None}


def _fake_ray(monkeypatch, replica_context):
    """`ray` and `ray.serve` as a Serve replica sees them (or any other Ray process)."""
    runtime = SimpleNamespace(get_node_id=lambda: "node-1")
    ray = SimpleNamespace(get_runtime_context=lambda: runtime)
    serve = SimpleNamespace(get_replica_context=replica_context)
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.serve", serve)


def test_in_a_serve_replica_it_names_the_node_and_replica(monkeypatch):
    context = SimpleNamespace(app_name="llmviz", deployment="llmviz", replica_tag="ab12cd34")
    _fake_ray(monkeypatch, lambda: context)
    assert placement.ray_placement() == {
        "node_id": "node-1",
        "application": "llmviz",
        "deployment": "llmviz",
        "replica_id": "ab12cd34",
    }


def test_a_ray_process_that_is_no_replica_has_no_placement(monkeypatch):
    def no_replica():
        raise RuntimeError("`serve.get_replica_context()` may only be called from within a replica")

    _fake_ray(monkeypatch, no_replica)
    assert placement.ray_placement() is None


def test_models_says_who_answered(client):
    served_by = client.get("/models").get_json()["served_by"]
    assert served_by == {"host": socket.gethostname(), "pid": os.getpid(), "ray": None}
