"""The error handlers: unknown routes and methods get JSON errors too."""

from __future__ import annotations


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").get_json()["code"] == "not_found"
    response = client.get("/generate")
    assert response.status_code == 405
    assert "error" in response.get_json()
