"""The operations blueprint: Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response

from app import lifecycle, metrics

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
def prometheus():
    """Prometheus text format: requests, latencies, tokens, engine gauges, model loads."""
    lifecycle.refresh_gauges()
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
