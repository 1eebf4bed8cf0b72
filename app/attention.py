"""Getting attention weights out of a model that normally computes them fused (SDPA)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
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
