"""Interventions on a model's internals while it runs: ablate a head or an MLP, steer the
residual stream with a vector, patch it with another text's.

Each is a PyTorch hook on one module of one decoder block, installed only around the
forward passes of the requests that asked for it (`applied`). Hooks belong to the module,
not to a thread; they touch no other request because the model's own thread runs every
pass of the model, one group's round after another (app/engine/worker.py), and an
intervened request is a group of its own:
- `ablate_head` (layer L, head H): zero head H's slice of the attention output before the
  output projection (a pre-hook on the projection: `c_proj`, `o_proj`, `dense`), as
  TransformerLens's `hook_z` ablation does. For grouped-query models, H is a query head.
- `ablate_mlp` (L): zero the MLP block's output (a hook on the block's `mlp`).
- `steer` (L, vector v, scale s): add s·v to the residual stream entering block L at every
  position, prompt and generated (activation addition, Turner et al. 2023, "Activation
  Addition: Steering Language Models Without Optimization"). A contrast of two texts
  gives v: the residual stream entering L at the last token of the first minus the second.
- `patch` (L, source ids, positions): replace the residual stream entering L at those
  positions by the source text's there, in the pass that reads the prompt (activation
  patching: Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; Vig et
  al. 2020, "Causal Mediation Analysis for Interpreting Neural NLP"). Later tokens see the
  patched positions through the KV cache.
"The residual stream entering layer L" is transformers' `hidden_states[L]`: the input of
decoder block L. Contrast vectors and patch sources are computed on the model without
interventions, once, the first time the set is applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.engine.contract import CausalLM, input_device

KINDS = ("ablate_head", "ablate_mlp", "steer", "patch")
# Where a decoder block keeps its attention's output projection, by architecture: GPT-2;
# Llama, Mistral, Qwen2, Gemma-2, Phi-3; Phi-1/2; GPT-NeoX.
_OUT_PROJECTIONS = ("attn.c_proj", "self_attn.o_proj", "self_attn.dense", "attention.dense")


@dataclass(frozen=True)
class Intervention:
    """One intervention, checked against the model (see the web layer's `interventions`).

    `vector` (steer) is [d_model] floats; `contrast` (steer) the token ids of two texts;
    `source` (patch) the source text's token ids, `positions` where to patch.
    """

    kind: str
    layer: int
    head: int | None = None
    vector: tuple[float, ...] | None = None
    contrast: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    scale: float = 1.0
    source: tuple[int, ...] | None = None
    positions: tuple[int, ...] = ()


def decoder_blocks(model: CausalLM) -> nn.ModuleList:
    """The model's stack of transformer blocks (block L reads `hidden_states[L]`)."""
    n_layers = model.config.get_text_config().num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError("cannot find this model's transformer blocks")


def out_projection(block: nn.Module) -> nn.Module:
    """The block's attention output projection, whose input holds the heads side by side."""
    for path in _OUT_PROJECTIONS:
        module: Any = block
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(block).__name__} has no attention output projection this knows")


class InterventionSet:
    """The interventions of one request, applied together around its passes."""

    def __init__(self, items: Sequence[Intervention]) -> None:
        self.items = tuple(items)
        # Requests with equal interventions may share passes: every row gets the same
        # change. Not with a patch: it names positions, which rows of other lengths (left
        # padded) hold elsewhere.
        self.shareable = all(item.kind != "patch" for item in self.items)
        self._vectors: dict[int, torch.Tensor] = {}  # steer: item index -> s·v
        self._sources: dict[int, torch.Tensor] = {}  # patch: item index -> [T_src, d_model]
        self._resolved = False
        self._heads = 0  # the model's query heads, read when applied

    @contextmanager
    def applied(self, model: CausalLM) -> Iterator[None]:
        """Hooks in place for the passes run inside (the model's thread only)."""
        if not self._resolved:
            self._resolve(model)
        blocks = decoder_blocks(model)
        self._heads = model.config.get_text_config().num_attention_heads
        handles = [self._hook(blocks, i, item) for i, item in enumerate(self.items)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.inference_mode()
    def _resolve(self, model: CausalLM) -> None:
        """Contrast vectors and patch sources: the residual stream entering their layer."""
        blocks = decoder_blocks(model)
        for i, item in enumerate(self.items):
            if item.kind == "steer":
                if item.contrast is not None:
                    first, second = (
                        _entering(model, blocks, item.layer, ids)[-1] for ids in item.contrast
                    )
                    vector = first - second
                else:
                    vector = torch.tensor(item.vector or (), dtype=torch.float32)
                self._vectors[i] = item.scale * vector
            elif item.kind == "patch":
                assert item.source is not None
                self._sources[i] = _entering(model, blocks, item.layer, item.source)
        self._resolved = True

    def _hook(self, blocks: nn.ModuleList, i: int, item: Intervention) -> Any:
        block = blocks[item.layer]
        if item.kind == "ablate_head":
            heads = self._heads
            return out_projection(block).register_forward_pre_hook(_ablate(item.head or 0, heads))
        if item.kind == "ablate_mlp":
            mlp = getattr(block, "mlp", None)
            if not isinstance(mlp, nn.Module):
                raise ValueError(f"{type(block).__name__} has no `mlp` module")
            return mlp.register_forward_hook(lambda module, args, output: torch.zeros_like(output))
        if item.kind == "steer":
            added = self._vectors[i]
            return block.register_forward_pre_hook(
                _shift(lambda h: h + added.to(h)), with_kwargs=True
            )
        source, positions = self._sources[i], list(item.positions)
        return block.register_forward_pre_hook(
            _shift(self._patcher(source, positions)), with_kwargs=True
        )

    def _patcher(self, source: torch.Tensor, positions: list[int]) -> Any:
        def patch(hidden: torch.Tensor) -> torch.Tensor:
            # Only the pass that reads the prompt holds its positions; later passes read one
            # new token a row (the patched ones are in the KV cache by then).
            if hidden.shape[1] <= max(positions):
                return hidden
            hidden = hidden.clone()
            hidden[:, positions] = source[positions].to(hidden)
            return hidden

        return patch


def _ablate(head: int, heads: int) -> Any:
    """A pre-hook zeroing one head's slice of the projection's input [..., heads × d_head]."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        mixed = args[0]
        width = mixed.shape[-1] // heads
        mixed = mixed.clone()
        mixed[..., head * width : (head + 1) * width] = 0
        return (mixed, *args[1:])

    return hook


def _shift(change: Any) -> Any:
    """A pre-hook (with kwargs) that replaces a block's input hidden states by change(them)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (change(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}

    return hook


def _entering(
    model: CausalLM, blocks: nn.ModuleList, layer: int, ids: Sequence[int]
) -> torch.Tensor:
    """The residual stream entering block `layer` for `ids`: [len(ids), d_model] float32."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden[0].float())

    handle = blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(torch.tensor([list(ids)], device=input_device(model)), use_cache=False)
    finally:
        handle.remove()
    return seen[0]
