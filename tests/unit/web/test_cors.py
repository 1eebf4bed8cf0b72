"""CORS (set up by the app factory): preflights, response headers, restricted origins."""

from __future__ import annotations

import pytest

from app import create_app


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
    app = create_app({"model_root": model_root, "cors_origins": ("http://good.example",)})
    client = app.test_client()
    good = client.get("/health", headers={"Origin": "http://good.example"})
    bad = client.get("/health", headers={"Origin": "http://evil.example"})
    assert good.headers["Access-Control-Allow-Origin"] == "http://good.example"
    assert "Access-Control-Allow-Origin" not in bad.headers


# An answer that varies by a request header without saying so (expressjs/cors #106): with
# a CORS policy other than "*", whether an answer carries Access-Control-Allow-Origin (and
# which) depends on the request's Origin, so every answer must say `Vary: Origin`, or a
# shared cache may hand one origin's answer (without CORS headers) to another.

GOOD, OTHER, EVIL = "http://good.example", "http://other.example", "http://evil.example"
KEY = "cors-test-key"

# (method, path, body, extra headers): a success, the JSON error handlers' answers (an
# APIError, a werkzeug 404 and 405, an unknown /v1 route), a stream, a preflight.
REQUESTS = [
    ("GET", "/health", None, {}),
    ("GET", "/models", None, {}),
    ("GET", "/no/such/endpoint", None, {}),
    ("GET", "/v1/no/such/endpoint", None, {}),
    ("GET", "/models/no-such-model/config", None, {}),
    ("GET", "/generate", None, {}),
    ("POST", "/tokenize", {"prompt": 3}, {}),
    ("POST", "/generate/stream", {"prompt": "Hi", "max_new_tokens": 2}, {}),
    ("OPTIONS", "/generate", None, {"Access-Control-Request-Method": "POST"}),
]


def _vary(response) -> list[str]:
    return [
        item.strip().lower()
        for header in response.headers.getlist("Vary")
        for item in header.split(",")
        if item.strip()
    ]


def _answer(client, method, path, body, headers):
    response = client.open(path, method=method, json=body, headers=headers)
    response.close()  # a stream's headers are all there is to check
    return response


@pytest.mark.parametrize("origins", [(GOOD, OTHER), (GOOD,)], ids=["several origins", "one origin"])
@pytest.mark.parametrize("origin", [GOOD, EVIL, None], ids=["allowed", "disallowed", "none"])
@pytest.mark.parametrize(("method", "path", "body", "extra"), REQUESTS)
def test_every_answer_of_a_restricted_policy_varies_by_origin(
    model_root, origins, origin, method, path, body, extra
):
    """expressjs/cors #106: an answer to a disallowed Origin had no `Vary: Origin`."""
    app = create_app(
        {"model_root": model_root, "default_model": "tiny-gpt2", "cors_origins": origins}
    )
    headers = dict(extra, **({"Origin": origin} if origin else {}))
    response = _answer(app.test_client(), method, path, body, headers)
    assert _vary(response).count("origin") == 1, (response.status_code, response.headers)


@pytest.mark.parametrize("origin", [GOOD, EVIL, None], ids=["allowed", "disallowed", "none"])
def test_a_401_of_a_restricted_policy_varies_by_origin_and_key(model_root, origin):
    """expressjs/cors #106: a 401 (raised before any view) must say what it varies on too."""
    app = create_app({"model_root": model_root, "cors_origins": (GOOD, OTHER), "api_keys": KEY})
    client = app.test_client()
    headers = {"Origin": origin} if origin else {}
    refused = _answer(client, "GET", "/models", None, headers)
    assert refused.status_code == 401
    assert sorted(_vary(refused)) == ["authorization", "origin"]
    keyed = _answer(client, "GET", "/models", None, {**headers, "Authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 200
    assert sorted(_vary(keyed)) == ["authorization", "origin"]


def test_answers_vary_by_the_key_only_where_a_key_is_needed(model_root):
    """With keys on, an answer that depends on Authorization says so; /health does not."""
    app = create_app({"model_root": model_root, "api_keys": KEY})
    client = app.test_client()
    assert "authorization" in _vary(client.get("/models"))
    assert "authorization" in _vary(client.get("/no/such/endpoint"))
    assert "authorization" not in _vary(client.get("/health"))
    no_keys = create_app({"model_root": model_root}).test_client()
    assert "authorization" not in _vary(no_keys.get("/models"))


@pytest.mark.parametrize(("method", "path", "body", "extra"), REQUESTS)
def test_a_plain_wildcard_policy_does_not_vary_by_origin(client, method, path, body, extra):
    """With `*` every answer carries the same CORS headers: nothing to vary on."""
    for headers in ({"Origin": GOOD}, {}):
        response = _answer(client, method, path, body, {**extra, **headers})
        assert "origin" not in _vary(response)


@pytest.mark.parametrize("origins", [("*",), (GOOD,)], ids=["any-origin", "listed-origin"])
def test_preflights_allow_the_header_ray_serve_routes_by(model_root, origins):
    """The viewer and client.js name a call's model in `serve_multiplexed_model_id`
    (docs/scaling.md): a browser sends it only if the preflight allows it."""
    client = create_app({"model_root": model_root, "cors_origins": origins}).test_client()
    preflight = client.options(
        "/generate/stream",
        headers={
            "Origin": GOOD,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, serve_multiplexed_model_id",
        },
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "serve_multiplexed_model_id" in allowed and "authorization" in allowed
