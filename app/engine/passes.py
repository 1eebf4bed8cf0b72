"""What the engine's forward passes share: a pass's result, transformers' forward called
as the batches call it, and the cache-layer edits that roll a failed pass back.

Used by `DecodeBatch` (app/engine/batch.py) and `SoloSequence` (app/engine/solo.py).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from app.engine.attention import HeadSelection, eager_attention
from app.engine.contract import CausalLM, ForwardOutput, cache_keyword
from app.engine.kvcache import GrowingLayer


@dataclass
class Step:
    """One forward pass's results: next-token logits per row, and watched attention rows."""

    logits: torch.Tensor  # [rows, vocab]
    attention: list[torch.Tensor | None]  # per row: [layers, heads, keys] or None


def forward(model: CausalLM, ids, cache, mask, positions, watched: bool) -> ForwardOutput:
    # Eager attention only when a row asked for its attention: SDPA computes none.
    with eager_attention(model) if watched else nullcontext():
        return model(
            ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            output_attentions=watched,
            **{cache_keyword(type(model)): cache},
        )


def base_decoder(model: CausalLM) -> torch.nn.Module | None:
    """The model without its LM head (transformers' `base_model`), or None when it has none."""
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else None


def columns_of(layer) -> int | None:
    """Columns in a cache layer (None: never filled)."""
    keys = getattr(layer, "keys", None)
    return None if keys is None else keys.shape[-2]


def truncate(layer, width: int | None) -> None:
    """Cut a layer's cache back to `width` columns (None: it was never filled)."""
    if width is None:
        return
    if isinstance(layer, GrowingLayer):
        layer.truncate(width)
    else:
        layer.keys, layer.values = layer.keys[..., :width, :], layer.values[..., :width, :]


def last_rows(attentions, watch: HeadSelection, row: int, keys: int) -> torch.Tensor:
    """The last query's attention over this row's `keys` real keys: [layers, heads, keys]."""
    picked = []
    for layer in watch.layers:
        weights = attentions[layer][row, :, -1, -keys:]  # rows are left-padded
        picked.append(weights if watch.heads is None else weights[list(watch.heads)])
    return torch.stack(picked).float()
