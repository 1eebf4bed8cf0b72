"""Getting attention weights out of a model that normally computes them fused (SDPA)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


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


def last_rows(
    attentions: Sequence[torch.Tensor], layers: Sequence[int], heads: Sequence[int] | None
) -> torch.Tensor:
    """The last query position's attention, per selected layer and head: [layers, heads, keys]."""
    rows = torch.stack([attentions[i][0, :, -1, :] for i in layers]).float()
    return rows if heads is None else rows[:, list(heads)]
