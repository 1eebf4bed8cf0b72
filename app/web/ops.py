"""The operations blueprint: GET /health and GET /metrics."""

from __future__ import annotations

from flask import Blueprint, Response

from app.errors import ShuttingDown
from app.ops import lifecycle, metrics
from app.web.answers import HealthResponse
from app.web.docs import documented
from app.web.shaping import reply

bp = Blueprint("ops", __name__)


@bp.before_app_request
def _refuse_when_draining():
    """Once the shutdown drain has begun, refuse every new request with 503 `shutting_down`.

    A worker that has its SIGTERM but has not yet begun to drain serves what reaches it
    (app/ops/lifecycle.py, `begin_shutdown`): on a reload no other worker could have had it.
    From the drain on, generations here are being ended, so a new one could not finish;
    refused before any work starts, a proxy can safely send it to another replica (nginx:
    `proxy_next_upstream http_503`), and `/health` tells a balancer to stop sending more.
    """
    if lifecycle.draining():
        raise ShuttingDown()


@bp.get("/health")
@documented(None, HealthResponse)
def health():
    """Liveness: answers at once, whatever the models are doing."""
    return reply(HealthResponse(ok=True))


@bp.get("/metrics")
@documented(None, "text/plain")
def prometheus():
    """Prometheus text format: requests, latencies, tokens, engine gauges, model loads."""
    lifecycle.refresh_gauges()
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
