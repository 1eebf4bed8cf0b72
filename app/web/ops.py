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
def _refuse_when_stopping():
    """After SIGTERM, refuse every new request with 503 `shutting_down` before it starts work.

    gunicorn stops accepting connections, but a request can still reach a stopping worker
    on a kept-alive connection (a proxy's upstream keep-alive) or in the moment before the
    worker closes its listener. Served, it could outlive the grace period; refused, nothing
    has started, so a proxy can safely send it to another replica (nginx:
    `proxy_next_upstream http_503`), and `/health` tells a balancer to stop sending more.
    """
    if lifecycle.stopping():
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
