"""A remote model as the web layer sees it: its jobs, its tokenizer, its listing.

One `RemoteModel` per entry of LLMVIZ_REMOTE_MODELS, made on first use and kept for the
process (its HTTP connections are pooled in a `requests.Session`, which gevent's patched
sockets make cooperative).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.config import Settings
from app.engine import SamplingParams
from app.errors import ModelLoadFailed, NotAvailableRemotely, RemoteFailed, RemoteTimeout
from app.models.remote.client import CONNECT_SECONDS
from app.models.remote.job import RemoteJob
from app.remotes import RemoteSpec, parse_remote_models

# Each engine's tokenize endpoint (relative to the server's root, not its /v1) and how its
# request and answer read; engines without one need a local tokenizer.
_TOKENIZE = {
    "vllm": ("tokenize", lambda spec, text: {"model": spec.model, "prompt": text}, "tokens"),
    "llama.cpp": ("tokenize", lambda spec, text: {"content": text}, "tokens"),
    "llmviz": (
        "tokenize",
        lambda spec, text: {"model_id": spec.model, "prompt": text},
        "token_ids",
    ),
}


class RemoteModel:
    """One remote model: how to reach it, and its counters."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.session = requests.Session()
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._lock = threading.Lock()
        self.started_jobs = 0

    @property
    def model_id(self) -> str:
        """This server's id for the model."""
        return self.spec.model_id

    def job(
        self, endpoint: str, body: dict[str, Any], prompt_ids: list[int], params: SamplingParams
    ) -> RemoteJob:
        """A job generating `body` at the remote's `endpoint` ("completions" or
        "chat/completions"), not yet connected."""
        self.started_jobs += 1
        request = {"model": self.spec.model, **body}
        return RemoteJob(self.spec, endpoint, request, prompt_ids, params, self.session)

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The local tokenizer the spec names, loaded on first use (None without one).

        Raises:
            ModelLoadFailed: it cannot be loaded.
        """
        if self.spec.tokenizer is None:
            return None
        with self._lock:
            if self._tokenizer is None:
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(
                        self.spec.tokenizer, trust_remote_code=False
                    )
                except (OSError, ValueError) as exc:
                    raise ModelLoadFailed(
                        f"the tokenizer {self.spec.tokenizer!r} of remote model "
                        f"{self.model_id!r} cannot be loaded: {str(exc).splitlines()[0]}"
                    ) from None
            return self._tokenizer

    def remote_token_ids(self, text: str) -> list[int]:
        """`text`'s token ids as the remote's own tokenize endpoint gives them.

        Raises:
            NotAvailableRemotely: the engine has no tokenize endpoint.
            RemoteFailed, RemoteTimeout: it failed.
        """
        known = _TOKENIZE.get(self.spec.engine)
        if known is None:
            raise NotAvailableRemotely(
                f"remote model {self.model_id!r} ({self.spec.engine}) has no tokenize "
                "endpoint: give it a local `tokenizer` in LLMVIZ_REMOTE_MODELS"
            )
        path, request, field = known
        key = self.spec.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = f"{_server_root(self.spec.url)}/{path}"
        try:
            response = self.session.post(
                url,
                json=request(self.spec, text),
                headers=headers,
                timeout=(CONNECT_SECONDS, self.spec.timeout),
            )
        except requests.Timeout:
            raise RemoteTimeout(f"remote model {self.model_id!r}: tokenize timed out") from None
        except requests.RequestException as exc:
            raise RemoteFailed(
                f"remote model {self.model_id!r} ({self.spec.host}) cannot be reached: "
                f"{type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            raise RemoteFailed(
                f"remote model {self.model_id!r} ({self.spec.host}) answered "
                f"{response.status_code} to tokenize: {response.text[:300]}"
            )
        ids = response.json().get(field)
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise RemoteFailed(f"remote model {self.model_id!r}: tokenize gave no token ids")
        return ids

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for GET /models (never the key, nor the URL's path)."""
        return {
            "model_id": self.model_id,
            "backend": "remote",
            "host": self.spec.host,
            "remote_model": self.spec.model,
            "engine": self.spec.engine,
            "local_tokenizer": self.spec.tokenizer is not None,
            "started_jobs": self.started_jobs,
        }


_registry: dict[str, dict[str, RemoteModel]] = {}
_registry_lock = threading.Lock()


def remote_models(settings: Settings) -> dict[str, RemoteModel]:
    """The remote models the settings name, made once per process and setting."""
    with _registry_lock:
        found = _registry.get(settings.remote_models)
        if found is None:
            specs = parse_remote_models(settings.remote_models)
            found = {model_id: RemoteModel(spec) for model_id, spec in specs.items()}
            _registry[settings.remote_models] = found
        return found


def remote_model(model_id: str | None, settings: Settings) -> RemoteModel | None:
    """The remote model of that id, or None when it is not one."""
    if model_id is None or not settings.remote_models:
        return None
    return remote_models(settings).get(model_id)


def _server_root(url: str) -> str:
    """The remote's root: its OpenAI API URL without the trailing /v1."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/").removesuffix("/v1")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
