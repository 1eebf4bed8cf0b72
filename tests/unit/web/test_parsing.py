"""Reading a request: JSON whatever its content type, and the body size limit."""

from __future__ import annotations

import pytest


def test_json_sent_as_text_plain_is_accepted(client):
    response = client.post("/tokenize", data='{"prompt": "Hi"}', content_type="text/plain")
    assert response.status_code == 200


def test_body_over_the_limit_is_413(model_root):
    from app import create_app

    small = create_app({"model_root": model_root, "max_body_bytes": 1000}).test_client()
    response = small.post("/generate", json={"prompt": "x" * 2000})
    assert response.status_code == 413
    assert "LLMVIZ_MAX_BODY_BYTES" in response.get_json()["error"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_the_limit_is_read_as_gunicorn_passes_it(model_root, chunked):
    # gunicorn says it ends the stream itself (wsgi.input_terminated), so werkzeug wraps it
    # in a stream that refuses any read at the limit: a body of exactly the limit must
    # still be read (a proxy in front, with the same limit, lets it through).
    from app import create_app

    limit = 1000
    small = create_app({"model_root": model_root, "max_body_bytes": limit}).test_client()

    def post(size):
        body = b" " * (size - 2) + b"{}"
        headers = {"Transfer-Encoding": "chunked"} if chunked else {}
        environ = {"wsgi.input_terminated": True}
        return small.post("/tokenize", data=body, headers=headers, environ_overrides=environ)

    exact = post(limit)
    assert exact.status_code == 400, exact.get_json()  # read, then refused for its content
    assert "prompt" in exact.get_json()["error"]
    over = post(limit + 1)
    assert over.status_code == 413
    assert "LLMVIZ_MAX_BODY_BYTES" in over.get_json()["error"]
