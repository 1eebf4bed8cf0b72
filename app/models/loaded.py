"""A model in memory: its weights, tokenizer and worker thread, behind a small interface.

Code above the registry asks a `LoadedModel` for what it needs (its shape, its
counters, work to be queued) and never reaches into the worker or the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.engine import GenerationJob, ModelTask, ModelWorker
from app.models.resolution import ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    """A model in memory, with the worker thread that owns it."""

    spec: ModelSpec
    model: PreTrainedModel  # only the worker thread runs it
    tokenizer: PreTrainedTokenizerBase  # shared: no call may change its settings
    worker: ModelWorker
    eos_ids: frozenset[int]
    context_length: int | None
    load_seconds: float
    memory_bytes: int = 0
    last_used: float = field(default_factory=time.time)

    @property
    def model_id(self) -> str:
        """The id this model was loaded under."""
        return self.spec.model_id

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

    def shape(self) -> dict[str, int]:
        """Layer and head counts, for checking selections."""
        config = self.model.config.get_text_config()
        return {"n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads}

    def placement(self) -> dict[str, str]:
        """Where the weights live: `device` ("cpu", "cuda:0") and `dtype` ("float32", ...)."""
        return {
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for GET /models."""
        return {
            "model_id": self.spec.model_id,
            "source": "local" if self.spec.local else "hub",
            **self.placement(),
            "context_length": self.context_length,
            "load_seconds": round(self.load_seconds, 3),
            "memory_bytes": self.memory_bytes,
            "last_used": max(self.last_used, self.worker.last_finished),
            **self.stats(),
        }
