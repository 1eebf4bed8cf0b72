"""Reading a request: JSON whatever its content type, and the body size limit."""

from __future__ import annotations


def test_json_sent_as_text_plain_is_accepted(client):
    response = client.post("/tokenize", data='{"prompt": "Hi"}', content_type="text/plain")
    assert response.status_code == 200


def test_body_over_the_limit_is_413(model_root):
    from app import create_app

    small = create_app({"model_root": model_root, "max_body_bytes": 1000}).test_client()
    response = small.post("/generate", json={"prompt": "x" * 2000})
    assert response.status_code == 413
    assert "LLMVIZ_MAX_BODY_BYTES" in response.get_json()["error"]
