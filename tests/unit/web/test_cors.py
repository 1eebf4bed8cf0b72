"""CORS (set up by the app factory): preflights, response headers, restricted origins."""

from __future__ import annotations


def test_cors_preflight_and_response_headers(client):
    preflight = client.options(
        "/generate/stream",
        headers={
            "Origin": "http://viz.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    response = client.post("/tokenize", json={"prompt": "x"}, headers={"Origin": "http://a.b"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origins_can_be_restricted(model_root):
    from app import create_app

    app = create_app({"model_root": model_root, "cors_origins": ("http://good.example",)})
    client = app.test_client()
    good = client.get("/health", headers={"Origin": "http://good.example"})
    bad = client.get("/health", headers={"Origin": "http://evil.example"})
    assert good.headers["Access-Control-Allow-Origin"] == "http://good.example"
    assert "Access-Control-Allow-Origin" not in bad.headers
