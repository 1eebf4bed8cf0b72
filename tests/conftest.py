"""Shared fixtures: tiny offline models, the Flask app and its client, an empty model cache.

The live fixtures (a real gunicorn server) are in tests/live/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile

# Before transformers is imported: never reach the hub, and use a private hub cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="llmviz-hub-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from app import create_app, models  # noqa: E402
from tests.support.chain_models import save_chain_text  # noqa: E402
from tests.support.server import descendants  # noqa: E402
from tests.support.tiny_models import MODEL_IDS, save_gpt2, save_llama  # noqa: E402

SLOW_ACTIVATION = "gelu_fast"  # see `model_root`

# The chain model's greedy continuations (each text one GPT-2 token, see chain_models.py).
CHAINS = [
    ["Dam", "Dam"],  # "Dam" forever
    ["Hello", " world", "\r", "\n", "Hello"],  # CRLF split across two tokens
    ["The", " cat", " sat", " on", " the", " mat", ".", " The", " cat"],
]


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests():
    """Fail the run if any process started by a test (a server, a browser) is still alive."""
    yield
    leftovers = descendants(os.getpid())
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes started by the tests outlived them: {leftovers}"


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    """A model root holding tiny GPT-2 and Llama models, built offline once per run."""
    root = tmp_path_factory.mktemp("models")
    save_gpt2(root / "tiny-gpt2")
    save_llama(root / "tiny-llama")
    # Bigger (still random) GPT-2 whose generations last long enough to overlap other requests.
    # "gelu_fast" (the same curve as GPT-2's "gelu_new", another formula) is one the fused
    # step does not compute: slow-gpt2 decodes through the lean step (3.6 s for 2000 tokens
    # here, against 1.0 s fused), the pace the tests of drains and departures rely on.
    save_gpt2(root / "slow-gpt2", n_layer=4, n_embd=256, n_head=4, activation=SLOW_ACTIVATION)
    return root


@pytest.fixture(scope="session")
def chain_model(model_root):
    """ "chain-gpt2" in the model root: GPT-2's real tokenizer, greedy output set by CHAINS."""
    save_chain_text(model_root / "chain-gpt2", CHAINS)
    return "chain-gpt2"


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
