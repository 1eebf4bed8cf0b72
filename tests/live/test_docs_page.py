"""/docs in Chromium against the real gunicorn server: Swagger UI renders the OpenAPI
document and shows every operation in it, from the server's own files (no CDN).

Issue 24: the page once loaded Swagger UI 4.15.5, which cannot read `openapi: 3.1.0` and
showed "Unable to render this definition", while a test checked only that /docs was 200.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

pytestmark = pytest.mark.browser

# Each operation Swagger UI shows: its method and path, as the document names them.
OPERATIONS = """() => [...document.querySelectorAll('#swagger-ui .opblock')].map(block => [
  block.querySelector('.opblock-summary-method').textContent.trim().toLowerCase(),
  block.querySelector('.opblock-summary-path').dataset.path,
])"""


def test_docs_shows_every_operation_of_the_document(server, browser):
    document = requests.get(server.url("/openapi.json"), timeout=10).json()
    assert document["openapi"] == "3.1.0"
    expected = sorted((method, path) for path, ops in document["paths"].items() for method in ops)
    assert len(expected) >= 15  # the whole API, not an empty document

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    hosts, errors = set(), []
    page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        assert page.goto(server.url("/docs")).status == 200
        page.wait_for_selector("#swagger-ui .opblock", timeout=30_000)
        shown = sorted(tuple(pair) for pair in page.evaluate(OPERATIONS))
        text = page.inner_text("#swagger-ui")
        title = page.inner_text("#swagger-ui .info .title")
    finally:
        context.close()
    assert "Unable to render" not in text
    assert shown == expected  # every operation, each once
    assert "llmviz-server" in title
    assert hosts == {urlsplit(server.base).netloc}  # offline: nothing from anywhere else
    assert errors == []
