"""Which process answered: host and pid, and under Ray Serve its node and replica.

Behind a balancer (nginx replicas, a Ray Serve fleet) each answer comes from one of many
processes, each with its own models; GET /models says which, so a fleet can be inspected
one replica at a time and a test can see how requests spread.

Ray is never imported here. A Serve replica is a process where Ray has already been
imported and a replica context is set; anywhere else `ray` is None.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any


def served_by() -> dict[str, Any]:
    """This process: `host`, `pid`, and `ray` (its Serve placement, or None outside Serve)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "ray": ray_placement()}


def ray_placement() -> dict[str, str] | None:
    """The Ray node, Serve application, deployment and replica of this process, when it is
    a Serve replica; None otherwise (Ray not imported, or not inside a replica)."""
    ray = sys.modules.get("ray")
    serve = sys.modules.get("ray.serve")
    if ray is None or serve is None:
        return None
    try:
        context = serve.get_replica_context()
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # Ray is imported, but this process is no replica
        return None
    return {
        "node_id": str(node_id),
        "application": str(context.app_name),
        "deployment": str(context.deployment),
        "replica_id": str(context.replica_tag),
    }
