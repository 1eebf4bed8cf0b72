"""The operations blueprint: GET /health and GET /metrics."""

from __future__ import annotations

from flask import Blueprint, Response

from app.ops import lifecycle, metrics
from app.web.answers import HealthResponse
from app.web.docs import documented
from app.web.shaping import reply

bp = Blueprint("ops", __name__)


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
