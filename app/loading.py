"""Finding and loading models: resolve a client's model_id safely, read configs, load weights."""

from __future__ import annotations

import fnmatch
import functools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.architecture import describe, read_raw_config
from app.config import Settings
from app.engine import ModelWorker
from app.errors import BadRequest, ModelLoadFailed, ModelNotAllowed, ModelNotFound

log = logging.getLogger(__name__)

# Hugging Face repo ids: "name" or "owner/name", letters, digits, "-", "_", ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model_id points: a folder under the model root, or a hub repository."""

    model_id: str
    source: str
    local: bool


@dataclass
class LoadedModel:
    """A model in memory, with the worker thread that owns it."""

    spec: ModelSpec
    model: Any
    tokenizer: Any
    worker: ModelWorker
    eos_ids: frozenset[int]
    context_length: int | None
    load_seconds: float
    memory_bytes: int = 0
    last_used: float = field(default_factory=time.time)

    def idle_since(self, now: float) -> float:
        """Seconds since this model last served anything (0 while it is busy)."""
        stats = self.worker.stats()
        if stats["active"] or stats["queued"]:
            return 0.0
        return now - max(self.last_used, self.worker.last_finished)

    def shape(self) -> dict[str, int]:
        """Layer and head counts, for checking selections."""
        config = self.model.config.get_text_config()
        return {"n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for GET /models."""
        return {
            "model_id": self.spec.model_id,
            "source": "local" if self.spec.local else "hub",
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "context_length": self.context_length,
            "load_seconds": round(self.load_seconds, 3),
            "memory_bytes": self.memory_bytes,
            "last_used": max(self.last_used, self.worker.last_finished),
            **self.worker.stats(),
        }


def resolve(model_id: str, settings: Settings) -> ModelSpec:
    """Map client input to a model location without ever leaving the model root."""
    path = PurePosixPath(model_id)
    if (
        "\\" in model_id
        or "\x00" in model_id
        or path.is_absolute()
        or Path(model_id).is_absolute()
        or any(part in ("..", ".") for part in model_id.split("/"))
    ):
        raise BadRequest(
            "model_id must be a folder name under LLMVIZ_MODEL_ROOT or a Hugging Face id; "
            "absolute paths and '..' are not allowed"
        )
    allowed = settings.model_allowlist
    if allowed and not any(fnmatch.fnmatchcase(model_id, pattern) for pattern in allowed):
        raise ModelNotAllowed(f"model {model_id!r} is not in this server's LLMVIZ_MODEL_ALLOWLIST")
    folder = settings.model_root / model_id
    if _is_dir(folder):
        return ModelSpec(model_id, str(folder), local=True)
    if not settings.allow_hub:
        raise ModelNotFound(
            f"model {model_id!r} is not a folder under LLMVIZ_MODEL_ROOT and "
            "Hugging Face hub models are turned off (LLMVIZ_ALLOW_HUB=0)"
        )
    if not _HUB_ID.match(model_id) or "--" in model_id or ".." in model_id:
        raise ModelNotFound(f"model {model_id!r} is not a local folder or a valid Hugging Face id")
    return ModelSpec(model_id, model_id, local=False)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system is simply not a folder
        return False


def check_available(spec: ModelSpec) -> None:
    """Fail fast, before any weights are read, when a model cannot exist."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(spec.source, trust_remote_code=False)
    except OSError as exc:
        raise ModelNotFound(_not_found_message(spec, exc)) from None
    except ValueError as exc:
        raise BadRequest(f"model {spec.model_id!r} cannot be served: {_first_line(exc)}") from None


@functools.lru_cache(maxsize=64)
def architecture(spec: ModelSpec) -> dict[str, Any]:
    """The normalized architecture of a model, from its config alone (no weights)."""
    from transformers import AutoConfig
    from transformers.utils import cached_file

    try:
        config = AutoConfig.from_pretrained(spec.source, trust_remote_code=False)
        raw = read_raw_config(cached_file(spec.source, "config.json"))
    except OSError as exc:
        raise ModelNotFound(_not_found_message(spec, exc)) from None
    except ValueError as exc:
        raise BadRequest(f"model {spec.model_id!r} cannot be served: {_first_line(exc)}") from None
    return describe(config, raw)


def list_local(root: Path) -> list[str]:
    """Model ids under the model root: folders (or owner/name folders) with a config.json."""
    if not root.is_dir():
        return []
    found = [*root.glob("*/config.json"), *root.glob("*/*/config.json")]
    return sorted(str(path.parent.relative_to(root).as_posix()) for path in found)


def load(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Load tokenizer and weights (slow, blocking); raise an APIError a client can read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _pick_device(settings.device, torch)
    started = time.perf_counter()
    try:
        # trust_remote_code stays off: a request must never run code from a repository.
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            spec.source, dtype=_pick_dtype(settings.dtype, device, torch), trust_remote_code=False
        )
    except OSError as exc:
        raise ModelNotFound(_not_found_message(spec, exc)) from None
    except ValueError as exc:  # e.g. a config that is not a causal language model
        raise BadRequest(f"model {spec.model_id!r} cannot be served: {_first_line(exc)}") from None
    except Exception as exc:
        log.exception("loading %s failed", spec.model_id)
        raise ModelLoadFailed(
            f"loading model {spec.model_id!r} failed: {_first_line(exc)}"
        ) from None
    model.to(device).eval()
    eos_ids = _eos_ids(model, tokenizer)
    seconds = time.perf_counter() - started
    log.info("loaded model %s on %s in %.2fs", spec.model_id, device, seconds)
    worker = ModelWorker(model, tokenizer, eos_ids, settings.max_batch, settings.max_queue)
    memory = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    context = _context_length(model.config)
    return LoadedModel(spec, model, tokenizer, worker, eos_ids, context, seconds, memory)


def _pick_device(setting: str, torch: Any) -> Any:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadFailed("LLMVIZ_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def _pick_dtype(setting: str, device: Any, torch: Any) -> Any:
    # auto: float32 on CPU (half precision is slow there), the checkpoint's own dtype on GPU.
    if setting == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    return getattr(torch, setting)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def _context_length(config: Any) -> int | None:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _not_found_message(spec: ModelSpec, exc: OSError) -> str:
    if spec.local:
        return f"model folder {spec.model_id!r} has no loadable model: {_first_line(exc)}"
    return (
        f"model {spec.model_id!r} is not under LLMVIZ_MODEL_ROOT and could not be loaded "
        "from the Hugging Face hub (offline, not cached, or no such repository): "
        f"{_first_line(exc)}"
    )
