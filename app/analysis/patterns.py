"""Attention patterns for /inspect, reduced layer by layer as the forward pass makes them.

`output_attentions=True` makes transformers keep every layer's weights, [heads, T, T] each,
until the pass ends: 0.6 GB at 1024 tokens on GPT-2 small, whichever layers were asked for.
Instead, a forward hook on each requested layer's attention module reduces its weights (the
selected heads, as float16 or as each row's top-k keys) the moment the module returns them,
and the other layers' weights are dropped as soon as they are made: at most one layer's
full weights are alive at a time.

The attention module is the class transformers itself records attentions from
(`_can_record_outputs["attentions"]` of the model, transformers 5). A model that does not
declare it falls back to `output_attentions=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from app.engine import CausalLM, tensors


class PatternRecorder:
    """Collects the selected layers' patterns during one eager-attention forward pass.

    Use as a context manager around the pass; pass `output_attentions=self.needs_output`
    to the model, then `answer(out.attentions)` gives the JSON-ready part:
    `{"format": "dense", "weights": [L, H, T, T] float16}` or
    `{"format": "topk", "weights": [L, H, T, k] float16, "k": k, "indices": [L, H, T, k] int32}`
    (indices of keys after the query are -1 with weight 0).
    """

    def __init__(
        self,
        model: CausalLM,
        blocks: torch.nn.ModuleList,
        layers: list[int],
        heads: list[int] | None,
        attention_format: str,
        attention_k: int,
    ) -> None:
        self._layers = layers
        self._heads = heads
        self._format = attention_format
        self._k = attention_k
        self._reduced: dict[int, tuple[torch.Tensor, ...]] = {}
        self._modules = _attention_modules(model, blocks, layers)
        self._hooks: list[Any] = []

    @property
    def needs_output(self) -> bool:
        """True when no hook could be placed, and transformers must return the weights."""
        return self._modules is None

    def __enter__(self) -> PatternRecorder:
        for layer, module in (self._modules or {}).items():
            self._hooks.append(module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _hook(self, layer: int):
        def record(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError(f"layer {layer}'s attention returned no weights (not eager?)")
            self._reduced[layer] = self._reduce(weights[0])

        return record

    def _reduce(self, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One layer's [H, T, T] weights to what the answer keeps of them."""
        if self._heads is not None:
            weights = weights[self._heads]
        if self._format == "dense":
            return (weights.to(torch.float16),)
        tokens = weights.shape[-1]
        k = min(self._k, tokens)
        top, keys = weights.float().topk(k, dim=-1)
        future = keys > torch.arange(tokens, device=keys.device)[:, None]  # causal rows
        return (top.masked_fill(future, 0), keys.masked_fill(future, -1))

    def answer(self, attentions: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
        """The part of the answer; `attentions` is the pass's output where `needs_output`."""
        if self.needs_output:
            assert attentions is not None, "the pass was run without output_attentions"
            for layer in self._layers:
                self._reduced[layer] = self._reduce(attentions[layer][0])
        parts = [self._reduced[layer] for layer in self._layers]
        if self._format == "dense":
            weights = torch.stack([p[0] for p in parts])
            return {"format": "dense", "weights": tensors.encode_pieces(weights, "float16")}
        weights = torch.stack([p[0] for p in parts])
        return {  # AttentionPart's order: the answer is written as built (app/web/large.py)
            "format": "topk",
            "weights": tensors.encode_pieces(weights, "float16"),
            "k": weights.shape[-1],
            "indices": tensors.encode_pieces(torch.stack([p[1] for p in parts]), "int32"),
        }


def _attention_modules(
    model: CausalLM, blocks: torch.nn.ModuleList, layers: list[int]
) -> dict[int, torch.nn.Module] | None:
    """Each requested layer's self-attention module, or None where it cannot be told."""
    recorded = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    target = getattr(recorded, "target_class", recorded)
    suffix = getattr(recorded, "layer_name", None)  # GPT-2: ".attn", not ".crossattention"
    if not (isinstance(target, type) and issubclass(target, torch.nn.Module)):
        return None
    found: dict[int, torch.nn.Module] = {}
    for layer in layers:
        matches: list[torch.nn.Module] = [
            module
            for name, module in blocks[layer].named_modules()
            if isinstance(module, target) and (suffix is None or f".{name}".endswith(suffix))
        ]
        if len(matches) != 1:
            return None
        found[layer] = matches[0]
    return found
