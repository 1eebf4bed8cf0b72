"""Attention weights: which layers and heads to report, and getting them out of a model
that normally computes attention fused (SDPA) without weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.engine.contract import CausalLM


@dataclass(frozen=True)
class HeadSelection:
    """Layers and heads to report attention for; `heads` None means every head.

    Indices are already checked against the model's shape by whoever builds this.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None


@contextmanager
def eager_attention(model: CausalLM) -> Iterator[None]:
    """Compute attention weights explicitly for the duration, then switch back.

    Only the model's own thread calls this, between two decoding steps, so no
    other forward pass sees the switch.
    """
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
