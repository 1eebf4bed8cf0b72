"""LLMVIZ_REMOTE_MODELS: models served by another engine, fronted by this server.

A JSON object of local model id to the remote OpenAI-compatible server that runs it:

    {"big": {"url": "http://host:8000/v1", "model": "meta-llama/Llama-3.1-70B-Instruct",
             "api_key_env": "BIG_KEY", "engine": "vllm", "tokenizer": "<folder or hub id>"}}

- `url`: the remote's OpenAI API root (what an `openai` client takes as `base_url`).
- `model`: the remote's name for the model (default: the local id).
- `api_key_env`: the environment variable holding the remote's key (the key itself never
  appears in a setting, a log line or an answer).
- `engine`: `vllm`, `llama.cpp`, `ollama`, `llmviz` (this server) or `openai` (any other):
  which extensions the remote takes and how it shapes logprobs (app/models/remote/).
- `tokenizer`: a local folder or hub id of the model's tokenizer, optional: with one,
  prompts are counted and `/tokenize` answers here; without, `/tokenize` asks the remote.
- `timeout`: seconds to wait for the remote to answer or send the next piece (default 60).

Checked when settings are read: a typo stops startup, naming the model and the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ENGINES = ("vllm", "llama.cpp", "ollama", "llmviz", "openai")
_FIELDS = {"url", "model", "api_key_env", "engine", "tokenizer", "timeout"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RemoteSpec:
    """One remote model, as LLMVIZ_REMOTE_MODELS gives it."""

    model_id: str  # this server's id for it
    url: str  # the remote's OpenAI API root, without a trailing slash
    model: str  # the remote's id for it
    engine: str = "openai"
    api_key_env: str | None = None
    tokenizer: str | None = None
    timeout: float = 60.0

    @property
    def host(self) -> str:
        """The remote's host and port, shown in listings (never its path or any key)."""
        return urlsplit(self.url).netloc

    def api_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The remote's key, read from its variable now (so a rotated key is picked up)."""
        if self.api_key_env is None:
            return None
        return (os.environ if env is None else env).get(self.api_key_env)


def parse_remote_models(raw: str, env: Mapping[str, str] | None = None) -> dict[str, RemoteSpec]:
    """The remote models LLMVIZ_REMOTE_MODELS names ({} when unset).

    Raises:
        ValueError: not a JSON object of ids to objects with a valid `url`; an unknown
            field or engine; a key variable that is not set.
    """
    raw = raw.strip()
    if not raw:
        return {}
    name = "LLMVIZ_REMOTE_MODELS"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc.msg})") from None
    if not isinstance(parsed, dict) or not parsed:
        raise ValueError(f"{name} must be a non-empty JSON object of model id to remote")
    return {
        model_id: _spec(f"{name}[{model_id!r}]", model_id, entry, env)
        for model_id, entry in parsed.items()
    }


def _spec(where: str, model_id: str, entry: Any, env: Mapping[str, str] | None) -> RemoteSpec:
    if not model_id.strip() or model_id != model_id.strip():
        raise ValueError(f"{where}: a model id must be non-empty, with no spaces around it")
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with at least a `url`")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
    url = entry.get("url")
    if not isinstance(url, str):
        raise ValueError(f'{where}.url must be an http(s) URL such as "http://host:8000/v1"')
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f'{where}.url must be an http(s) URL such as "http://host:8000/v1"')
    if parts.username or parts.password:
        raise ValueError(f"{where}.url must not hold credentials: use api_key_env")
    strings = {key: entry.get(key) for key in ("model", "api_key_env", "tokenizer")}
    for key, value in strings.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{where}.{key} must be a non-empty string")
    engine = entry.get("engine", "openai")
    if engine not in ENGINES:
        raise ValueError(f"{where}.engine must be one of {', '.join(ENGINES)}")
    key_env = strings["api_key_env"]
    if key_env is not None:
        if not _ENV_NAME.fullmatch(key_env):
            raise ValueError(f"{where}.api_key_env must name an environment variable")
        if not (os.environ if env is None else env).get(key_env):
            raise ValueError(f"{where}.api_key_env: the variable {key_env} is not set")
    timeout = entry.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"{where}.timeout must be a positive number of seconds")
    return RemoteSpec(
        model_id=model_id,
        url=url.rstrip("/"),
        model=strings["model"] or model_id,
        engine=engine,
        api_key_env=key_env,
        tokenizer=strings["tokenizer"],
        timeout=float(timeout),
    )
