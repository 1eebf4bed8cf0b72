"""API keys: every endpoint but /health and preflights needs one, and none reaches the logs."""

from __future__ import annotations

import logging

import pytest

from app import create_app

KEY = "s3cret-key-0123"


# (method, path, body) for every endpoint.


ENDPOINTS = [
    ("GET", "/models", None),
    ("GET", "/models/tiny-gpt2/config", None),
    ("GET", "/models/config?model_id=tiny-gpt2", None),
    ("DELETE", "/models/tiny-llama", None),
    ("POST", "/tokenize", {"prompt": "Hi"}),
    ("POST", "/detokenize", {"token_ids": [40, 73]}),
    ("POST", "/generate", {"prompt": "Hi", "max_new_tokens": 2}),
    ("POST", "/generate/stream", {"prompt": "Hi", "max_new_tokens": 2}),
    ("POST", "/inspect", {"prompt": "Hi"}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.fixture
def keyed(model_root, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# operators\nfile-key-456\n\n")
    app = create_app(
        {
            "model_root": model_root,
            "default_model": "tiny-gpt2",
            "api_keys": (KEY, "other-key"),
            "api_keys_file": str(keys_file),
        }
    )
    return app.test_client()


def _call(client, method, path, body, headers):
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_auth_matrix(keyed, method, path, body):
    missing = _call(keyed, method, path, body, {})
    wrong = _call(keyed, method, path, body, {"Authorization": "Bearer nope"})
    not_bearer = _call(keyed, method, path, body, {"Authorization": f"Basic {KEY}"})
    for response in (missing, wrong, not_bearer):
        assert response.status_code == 401
        assert response.get_json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="llmviz"')
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    for key in (KEY, "other-key", "file-key-456"):
        right = _call(keyed, method, path, body, {"Authorization": f"Bearer {key}"})
        assert right.status_code in (200, 404), (path, right.get_data(as_text=True)[:200])


def test_health_and_preflight_need_no_key(keyed):
    assert keyed.get("/health").get_json() == {"ok": True}
    preflight = keyed.options(
        "/generate",
        headers={
            "Origin": "http://viz.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_keys_never_reach_the_logs(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    for key in (KEY, "wrong-k"):
        response = keyed.post(
            "/generate",
            json={"prompt": "Hi", "max_new_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        )
        response.close()  # the request log line is written when the response closes
    assert caplog.records, "the request log wrote nothing"
    assert all(
        KEY not in r.getMessage() and "wrong-k" not in r.getMessage() for r in caplog.records
    )


def test_docs_can_be_made_public(model_root):
    client = create_app({"model_root": model_root, "api_keys": (KEY,), "public_docs": True})
    client = client.test_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/models").status_code == 401


def test_unreadable_keys_file_stops_startup(model_root, tmp_path):
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS_FILE"):
        create_app({"model_root": model_root, "api_keys_file": str(tmp_path / "missing")})


def test_the_viewer_page_and_its_files_need_no_key(model_root):
    client = create_app({"model_root": model_root, "api_keys": (KEY,)}).test_client()
    assert client.get("/").status_code == 200
    assert client.get("/viewer/client.js").status_code == 200
    assert client.get("/models").status_code == 401  # the data behind it still does
