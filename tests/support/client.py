"""Requests through Flask's test client (`app.test_client()`), checked for success."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient


def post_ok(client: FlaskClient, path: str, **body: Any) -> dict[str, Any]:
    """POST `body` as JSON to `path`; the JSON answer, after checking that it is a 200."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def generate(client: FlaskClient, **body: Any) -> dict[str, Any]:
    """The JSON answer of a POST /generate (a 200): `text`, and `details` when asked."""
    return post_ok(client, "/generate", **body)
