"""Shared fixtures: tiny offline models, the Flask app and client, a real gunicorn server."""

from __future__ import annotations

import os
import tempfile

# Before transformers is imported: never reach the hub, and use a private hub cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="llmviz-hub-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from app import create_app, models  # noqa: E402
from tests.server import LiveServer  # noqa: E402
from tests.tiny_models import save_gpt2, save_llama  # noqa: E402

MODEL_IDS = ("tiny-gpt2", "tiny-llama")


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    """A model root holding tiny GPT-2 and Llama models, built offline once per run."""
    root = tmp_path_factory.mktemp("models")
    save_gpt2(root / "tiny-gpt2")
    save_llama(root / "tiny-llama")
    # Bigger (still random) GPT-2 whose generations last long enough to overlap other requests.
    save_gpt2(root / "slow-gpt2", n_layer=4, n_embd=256, n_head=4)
    return root


@pytest.fixture(scope="session")
def tokenizers(model_root):
    """The two tokenizer families, loaded as the server loads them."""
    return {name: AutoTokenizer.from_pretrained(model_root / name) for name in MODEL_IDS}


@pytest.fixture
def app(model_root):
    """A Flask app serving the tiny models (tiny-gpt2 is the default)."""
    yield create_app({"model_root": model_root, "default_model": "tiny-gpt2"})


@pytest.fixture
def client(app):
    """Flask's test client for `app`."""
    return app.test_client()


@pytest.fixture
def fresh_cache():
    """An empty model cache before and after the test."""
    models.cache.clear()
    yield models.cache
    models.cache.clear()


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
        live = LiveServer({"LLMVIZ_MODEL_ROOT": str(model_root), **env}).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
