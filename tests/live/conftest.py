"""Live fixtures: the real gunicorn server (`gunicorn -c gunicorn.conf.py wsgi:app`)."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.server import LiveServer


@pytest.fixture(scope="session")
def server(model_root):
    """One real `gunicorn -c gunicorn.conf.py wsgi:app` (gevent worker) for the session."""
    env = {
        "LLMVIZ_MODEL_ROOT": str(model_root),
        "LLMVIZ_DEFAULT_MODEL": "tiny-gpt2",
        "LLMVIZ_MAX_NEW_TOKENS": "2000",
    }
    with LiveServer(env) as live:
        yield live


@pytest.fixture
def start_server(model_root):
    """Start extra gunicorn servers with their own LLMVIZ_* settings; stopped after the test."""
    started = []

    def start(**env: str) -> LiveServer:
        live = LiveServer({"LLMVIZ_MODEL_ROOT": str(model_root), **env})
        started.append(live)  # before start(): stopped even if it never becomes healthy
        return live.start()

    yield start
    for live in started:
        live.stop()


@pytest.fixture(scope="module")
def page_origin():
    """Serve tests/live/browser/ on its own port: a different origin from the API server."""
    handler = functools.partial(
        SimpleHTTPRequestHandler, directory=str(Path(__file__).parent / "browser")
    )
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless; never a browser that a tool downloaded."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser):
    """A fresh tab with its own storage and cache, collecting console errors in `errors`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
    yield page
    context.close()
