"""Interventions on a model's internals while it runs: ablate a head or an MLP, steer the
residual stream with a vector, patch it with another text's.

Each is a PyTorch hook on one module of one decoder block, installed only around forward
passes that hold rows of requests that asked for it (`for_rows`), and changing only those
rows: a plain request batched with intervened ones computes exactly what it computes
alone. Hooks belong to the module, not to a thread; the model's own thread runs every
pass of the model, one after another (app/engine/worker.py), so no other pass sees them.
Masking rows inside one shared pass, rather than a pass of their own for the intervened
rows, is the faster of the two (bench/intervention_rows.py, docs/performance.md).
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

Rows and positions: a pass's row r is one sequence; `starts[r]` is the sequence position
of its column 0 (negative where the row is left-padded, the chunk's offset for a chunk of
a prompt). A patch writes position p of row r at column p - starts[r] when the pass holds
it; decoding steps (starts None) hold no prompt position, and patch nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
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


Starts = Sequence[int] | int | None  # per row, one for every row, or a decoding step


class InterventionSet:
    """The interventions of one request, applied together around its passes."""

    def __init__(self, items: Sequence[Intervention]) -> None:
        self.items = tuple(items)
        self._vectors: dict[int, torch.Tensor] = {}  # steer: item index -> s·v
        self._sources: dict[int, torch.Tensor] = {}  # patch: item index -> [T_src, d_model]
        self._resolved = False
        self._heads = 0  # the model's query heads, read when applied

    @contextmanager
    def applied(
        self, model: CausalLM, rows: Sequence[int] | None = None, starts: Starts = 0
    ) -> Iterator[None]:
        """Hooks in place for the passes run inside (the model's thread only), changing
        batch rows `rows` (None: every row); `starts`: see the module's docstring (0: every
        row starts at position 0, as a whole unpadded prompt does)."""
        self.resolve(model)
        blocks = decoder_blocks(model)
        self._heads = model.config.get_text_config().num_attention_heads
        index = None if rows is None else torch.tensor(list(rows), device=input_device(model))
        handles = [
            self._hook(blocks, i, item, index, starts)
            for i, item in enumerate(self.items)
            if item.kind != "patch" or starts is not None
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.inference_mode()
    def resolve(self, model: CausalLM) -> None:
        """Contrast vectors and patch sources: the residual stream entering their layer,
        read from the model as it is (call it before any set's hooks are in place)."""
        if self._resolved:
            return
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

    def _hook(
        self,
        blocks: nn.ModuleList,
        i: int,
        item: Intervention,
        index: torch.Tensor | None,
        starts: Starts,
    ) -> Any:
        block = blocks[item.layer]
        if item.kind == "ablate_head":
            ablate = _ablate(item.head or 0, self._heads, index)
            return out_projection(block).register_forward_pre_hook(ablate)
        if item.kind == "ablate_mlp":
            mlp = getattr(block, "mlp", None)
            if not isinstance(mlp, nn.Module):
                raise ValueError(f"{type(block).__name__} has no `mlp` module")
            return mlp.register_forward_hook(lambda module, args, output: _zero(output, index))
        if item.kind == "steer":
            added = self._vectors[i]
            return block.register_forward_pre_hook(
                _shift(lambda h: _add(h, added, index)), with_kwargs=True
            )
        source, positions = self._sources[i], list(item.positions)
        return block.register_forward_pre_hook(
            _shift(_patcher(source, positions, index, starts)), with_kwargs=True
        )


@contextmanager
def for_rows(
    model: CausalLM, sets: Sequence[InterventionSet | None], starts: Starts
) -> Iterator[None]:
    """Hooks for one pass whose row r belongs to a request with interventions `sets[r]`
    (None: plain). Requests with equal interventions share one set of hooks."""
    by_items: dict[tuple[Intervention, ...], tuple[InterventionSet, list[int]]] = {}
    for row, changes in enumerate(sets):
        if changes is not None:
            by_items.setdefault(changes.items, (changes, []))[1].append(row)
    for changes, _ in by_items.values():
        changes.resolve(model)  # before any hook is in place: they read the model as it is
    with ExitStack() as stack:
        for changes, rows in by_items.values():
            every = len(rows) == len(sets)
            mine = (
                starts if starts is None or isinstance(starts, int) else [starts[r] for r in rows]
            )
            stack.enter_context(changes.applied(model, None if every else rows, mine))
        yield


def _ablate(head: int, heads: int, index: torch.Tensor | None) -> Any:
    """A pre-hook zeroing one head's slice of the projection's input [rows, T, heads × d_head]
    (in rows `index`; None: all)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        mixed = args[0].clone()
        width = mixed.shape[-1] // heads
        if index is None:
            mixed[..., head * width : (head + 1) * width] = 0
        else:
            mixed[index, ..., head * width : (head + 1) * width] = 0
        return (mixed, *args[1:])

    return hook


def _zero(output: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    if index is None:
        return torch.zeros_like(output)
    output = output.clone()
    output[index] = 0
    return output


def _add(hidden: torch.Tensor, added: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    if index is None:
        return hidden + added.to(hidden)
    hidden = hidden.clone()
    hidden[index] += added.to(hidden)  # the same sums as `hidden + added`, in those rows
    return hidden


def _patcher(
    source: torch.Tensor, positions: list[int], index: torch.Tensor | None, starts: Starts
) -> Any:
    def patch(hidden: torch.Tensor) -> torch.Tensor:
        rows = range(hidden.shape[0]) if index is None else index.tolist()
        firsts = [starts] * len(rows) if isinstance(starts, int) else list(starts or ())
        patched = hidden
        for row, first in zip(rows, firsts, strict=True):
            held = [p for p in positions if 0 <= p - first < hidden.shape[1]]
            if held:
                patched = hidden.clone() if patched is hidden else patched
                columns = [p - first for p in held]
                patched[row, columns] = source[held].to(hidden)
        return patched

    return patch


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
