"""What the layers above the registry know of a model.

- `ModelProfile`: its tokenizer and config, everything a request is checked
  against (prompt, context length, layers and heads). It loads in moments, before
  the weights, so a request can be refused with a plain JSON error before a
  stream starts.
- `LoadedModel`: the profile plus the weights and the worker thread that owns them.

Code above the registry asks these for what it needs (their shape, counters, work
to be queued) and never reaches into the worker or the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.engine import GenerationJob, ModelTask, ModelWorker
from app.errors import BadRequest
from app.models.resolution import ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelProfile:
    """A model's tokenizer and what its config says, without its weights."""

    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase  # shared: no call may change its settings
    context_length: int | None
    n_layers: int
    n_heads: int
    d_model: int | None = None  # the residual stream's width (None: the config does not say)

    @property
    def model_id(self) -> str:
        """The model's canonical id."""
        return self.spec.model_id

    def shape(self) -> dict[str, int]:
        """Layer and head counts, for checking selections."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads}

    def check_context(self, input_tokens: int, new_tokens: int = 0) -> None:
        """Refuse (400) an input that, with `new_tokens` more, would not fit the context."""
        limit = self.context_length
        if limit is None or input_tokens + new_tokens <= limit:
            return
        if new_tokens:
            raise BadRequest(
                f"the prompt has {_tokens(input_tokens)} and max_new_tokens is {new_tokens}, "
                f"but the model's context length is {limit}"
            )
        raise BadRequest(
            f"the input has {_tokens(input_tokens)}, but the model's context length is {limit}"
        )


@dataclass
class LoadedModel:
    """A model in memory, with the worker thread that owns it.

    Only the worker holds the weights (it runs them, and frees them when it exits after
    an unload); this object keeps what the layers above report about them.
    """

    profile: ModelProfile
    worker: ModelWorker
    eos_ids: frozenset[int]
    load_seconds: float
    memory_bytes: int = 0
    device: str = "cpu"  # "cpu", "cuda:0", ...
    dtype: str = "float32"
    packed_layers: int = 0  # linear layers packed for oneDNN (app/models/packing.py)
    quantization: str = "none"  # or int8, float16 linear weights (app/models/quantizing.py)
    # Where a model split by LLMVIZ_DEVICE_MAP lives (app/models/dispatch.py); None: whole
    # on `device`.
    device_map: dict[str, Any] | None = None
    last_used: float = field(default_factory=time.time)
    # Set by the cache, under its lock: out of the LRU, finishing accepted work (retiring),
    # then told to stop and freeing its weights (closing). See ModelCache.
    retiring: bool = False
    closing: bool = False

    @property
    def spec(self) -> ModelSpec:
        """Where the model came from."""
        return self.profile.spec

    @property
    def model_id(self) -> str:
        """The model's canonical id."""
        return self.profile.spec.model_id

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer (shared; see ModelProfile)."""
        return self.profile.tokenizer

    @property
    def context_length(self) -> int | None:
        """Most positions the model takes, or None when its config does not say."""
        return self.profile.context_length

    def check_context(self, input_tokens: int, new_tokens: int = 0) -> None:
        """See ModelProfile.check_context."""
        self.profile.check_context(input_tokens, new_tokens)

    def shape(self) -> dict[str, int]:
        """See ModelProfile.shape."""
        return self.profile.shape()

    def enqueue(self, work: GenerationJob | ModelTask) -> None:
        """Queue work on the model's thread (see ModelWorker.submit for the errors)."""
        self.worker.submit(work)

    def stats(self) -> dict[str, int]:
        """The worker's counters: active, queued, generated_tokens, decode_steps, ..."""
        return self.worker.stats()

    def idle_since(self, now: float) -> float:
        """Seconds since this model last served anything (0 while it is busy)."""
        stats = self.stats()
        if stats["active"] or stats["queued"]:
            return 0.0
        return now - max(self.last_used, self.worker.last_finished)

    def placement(self) -> dict[str, str]:
        """Where the weights live and how exact they are: `device` ("cpu", "cuda:0"), `dtype`
        ("float32", ...) and `quantization` ("none", or "int8"/"float16" linear weights)."""
        return {"device": self.device, "dtype": self.dtype, "quantization": self.quantization}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for GET /models."""
        return {
            "model_id": self.spec.model_id,
            "source": "local" if self.spec.local else "hub",
            **self.placement(),
            "context_length": self.context_length,
            "load_seconds": round(self.load_seconds, 3),
            "memory_bytes": self.memory_bytes,
            "packed_layers": self.packed_layers,
            "fused_step": self.worker.fused_step,
            "device_map": self.device_map,
            "last_used": max(self.last_used, self.worker.last_finished),
            "retiring": self.retiring,
            **self.stats(),
        }


def _tokens(count: int) -> str:
    return f"{count} token" if count == 1 else f"{count} tokens"
