"""Batched decoding: sequences of different lengths advance together, one forward pass a step.

A `DecodeBatch` holds one KV cache for all its rows. Rows are left-padded to a
common length; an attention mask hides the padding and explicit position ids
keep each row's own positions, so a row computes what it would compute alone
(up to floating-point noise from different matrix shapes). Sequences that
arrive together are prefilled together, then merged in; a finished one is cut
out at once. A long prompt that joins running rows can instead be prefilled a
chunk at a time into a cache of its own (`SoloSequence`, app/engine/solo.py), between
the running rows' steps or packed into the same pass (app/engine/mixed.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin

from app.engine.attention import HeadSelection
from app.engine.contract import CausalLM, ForwardOutput, input_device
from app.engine.kernels.gpt2 import FusedStep
from app.engine.kvcache import GrowingLayer, filled, growing_cache, stack_left_padded
from app.engine.lean import LeanStep, fused_takes
from app.engine.mixed import BatchPart, Part, mixed_forward, padded_mask
from app.engine.passes import Step, columns_of, forward, last_rows, truncate

_MERGEABLE = (GrowingLayer,)  # full-attention layers (growing_cache); sliding windows cannot merge


class DecodeBatch:
    """Rows decoded together over one left-padded KV cache."""

    def __init__(self, model: CausalLM, lean: LeanStep | None = None) -> None:
        """`lean`: the model's lean step, for plain steps (app/engine/lean.py)."""
        self._model = model
        self._lean = lean
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 = real token, 0 = padding
        self._lengths: list[int] = []  # real tokens per row
        self.watches: list[HeadSelection | None] = []

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def width(self) -> int:
        """Columns of the left-padded cache (the longest row's length)."""
        return 0 if self._mask is None else self._mask.shape[1]

    @property
    def mergeable(self) -> bool:
        """Whether rows can be added to this cache (sliding-window caches cannot)."""
        return self._cache is None or all(type(layer) in _MERGEABLE for layer in self._cache.layers)

    def _state(self) -> tuple[DynamicCache, torch.Tensor]:
        """The cache and the mask [rows, columns] of a batch that has rows."""
        if self._cache is None or self._mask is None:
            raise RuntimeError("the batch has no rows")  # a caller's bug
        return self._cache, self._mask

    @torch.inference_mode()
    def prefill(
        self, prompts: Sequence[Sequence[int]], watches: Sequence[HeadSelection | None]
    ) -> Step:
        """Run new sequences' prompts together (left-padded), then add them as the last rows."""
        device = input_device(self._model)
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), device=device)
            mask[row, width - len(prompt) :] = 1
        padded = min(lengths) < width
        positions = (mask.cumsum(-1) - 1).clamp_min(0) if padded else None
        cache = growing_cache(self._model)
        watched = any(w is not None for w in watches)
        # Only the last position's logits are needed: skip the vocabulary projection elsewhere.
        out = self._forward(ids, cache, mask if padded else None, positions, watched)
        attention = [
            last_rows(out.attentions, watch, row, lengths[row]) if watch else None
            for row, watch in enumerate(watches)
        ]
        self.merge(cache, mask, lengths, watches)
        return Step(out.logits[:, -1].float(), attention)

    @property
    def model(self) -> CausalLM:
        return self._model

    @torch.inference_mode()
    def step(self, tokens: Sequence[int], lean: bool = True) -> Step:
        """Feed each row its latest token; return every row's next-token logits. `lean`:
        whether the lean step (and the fused step for a lone row) may run it (not while
        hooks change some rows)."""
        if lean and self._lean is not None and self._lean.fused is not None:
            alone = self._fused_step(self._lean.fused, tokens)
            if alone is not None:
                return alone
        device = input_device(self._model)
        ids = torch.tensor([[t] for t in tokens], device=device)
        positions = torch.tensor([[n] for n in self._lengths], device=device)
        cache, mask = self._state()
        mask = F.pad(mask, (0, 1), value=1)
        padded = bool((mask == 0).any())
        watched = any(w is not None for w in self.watches)
        columns = [columns_of(layer) for layer in cache.layers]
        try:
            out: ForwardOutput
            if self._lean is not None and lean and not watched:
                out = self._lean(ids, positions, cache, mask if padded else None)
            else:
                out = self._forward(ids, cache, mask if padded else None, positions, watched)
        except Exception:
            self._roll_back(columns)
            raise
        self._mask = mask
        self._lengths = [n + 1 for n in self._lengths]
        attention = [
            last_rows(out.attentions, watch, row, self._lengths[row]) if watch else None
            for row, watch in enumerate(self.watches)
        ]
        return Step(out.logits[:, -1].float(), attention)

    def _fused_step(self, fused: FusedStep, tokens: Sequence[int]) -> Step | None:
        """A lone, unpadded, unwatched row's step through the fused step in C, without the
        tensors `step` builds for rows in general; None where it does not apply. A token or
        position outside the model raises ValueError before any column is written."""
        if len(self._lengths) != 1 or self.watches[0] is not None:
            return None
        cache, mask = self._state()
        length = self._lengths[0]
        if mask.shape[1] != length or not fused_takes(cache):  # padded, or another cache
            return None
        logits = fused(tokens[0], length, cache)
        self._mask = F.pad(mask, (0, 1), value=1)
        self._lengths = [length + 1]
        return Step(logits, [None])

    def mixed_step(self, tokens: Sequence[int], parts: Sequence[Part]) -> tuple[Step, torch.Tensor]:
        """`step`, with other sequences' parts in the same forward pass (app/engine/mixed.py).

        Returns the rows' Step (no rows when the batch is empty; no attention) and the
        logits [parts that want them, vocab]. On an exception the rows' cache is rolled
        back; the parts' owners roll back their own.
        """
        rows, columns = None, []
        if len(self):
            cache, mask = self._state()
            rows = BatchPart(cache, list(tokens), list(self._lengths), padded_mask(mask))
            columns = [columns_of(layer) for layer in cache.layers]
        try:
            logits = mixed_forward(self._model, rows, parts)
        except Exception:
            if rows is not None:
                self._roll_back(columns)
            raise
        if rows is not None:
            self._mask = rows.mask
            self._lengths = [n + 1 for n in self._lengths]
        count = len(rows.tokens) if rows is not None else 0
        return Step(logits[:count], [None] * count), logits[count:]

    def split(self) -> list[DecodeBatch]:
        """One batch per row, each with its own copy of that row's cache."""
        singles = []
        cache, mask = self._state()
        for row in range(len(self)):
            single = DecodeBatch(self._model, self._lean)
            single.merge(copy.deepcopy(cache), mask.clone(), self._lengths, self.watches)
            single.remove([i for i in range(len(self)) if i != row])
            singles.append(single)
        return singles

    def concatenate(self, other: DecodeBatch) -> None:
        """Add `other`'s rows after this batch's rows (`other` is consumed)."""
        if len(other):
            self.merge(*other._state(), other._lengths, other.watches)

    def remove(self, rows: Sequence[int]) -> None:
        """Drop these rows from the batch and its cache."""
        leaving = set(rows)
        keep = [i for i in range(len(self)) if i not in leaving]
        self._lengths = [self._lengths[i] for i in keep]
        self.watches = [self.watches[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        cache, mask = self._state()
        index = torch.tensor(keep, device=mask.device)
        self._mask = mask = mask[index]
        cache.batch_select_indices(index)
        # Columns that are padding in every remaining row are dead weight: cut them.
        first = int(mask.any(dim=0).nonzero()[0])
        if first:
            self._mask = mask[:, first:]
            for layer in cache.layers:
                # Never skip a layer: a cache cut apart from its mask would misalign them.
                if not isinstance(layer, CacheLayerMixin):
                    raise TypeError(f"{type(layer).__name__} holds no keys and values")
                keys, values = filled(layer)
                layer.keys, layer.values = keys[..., first:, :], values[..., first:, :]

    def _roll_back(self, columns: Sequence[int | None]) -> None:
        # A failed pass may have appended this step's keys and values to some layers.
        for layer, width in zip(self._state()[0].layers, columns, strict=True):
            truncate(layer, width)

    def merge(self, cache: DynamicCache, mask: torch.Tensor, lengths, watches) -> None:
        """Add rows (their cache [rows, ...], mask [rows, columns], lengths and watches)
        after this batch's rows, both left-padded to the wider (`cache` is consumed)."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
        else:
            width, new_width = self._mask.shape[1], mask.shape[1]
            grow, pad = max(new_width - width, 0), max(width - new_width, 0)
            self._mask = torch.cat([F.pad(self._mask, (grow, 0)), F.pad(mask, (pad, 0))])
            for old, new in zip(self._cache.layers, cache.layers, strict=True):
                if not isinstance(old, GrowingLayer) or not isinstance(new, GrowingLayer):
                    raise TypeError("only full-attention layers merge (see `mergeable`)")
                stack_left_padded(old, new)
        self._lengths += list(lengths)
        self.watches += list(watches)

    def _forward(self, ids, cache, mask, positions, watched: bool) -> ForwardOutput:
        return forward(self._model, ids, cache, mask, positions, watched)
