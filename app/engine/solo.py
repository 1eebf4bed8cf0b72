"""A sequence prefilled a chunk at a time into a KV cache of its own, then joined to a batch
or decoded beside it in mixed passes (app/engine/mixed.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from app.engine.attention import HeadSelection
from app.engine.batch import DecodeBatch
from app.engine.contract import CausalLM, cache_keyword, input_device
from app.engine.kvcache import growing_cache, headroom
from app.engine.mixed import Part
from app.engine.passes import Step, base_decoder, columns_of, forward, last_rows, truncate


class SoloSequence:
    """A sequence with a KV cache of its own (a batch of one), outside a DecodeBatch.

    A prompt that joins running rows goes in a chunk at a time: each chunk attends
    to the chunks before it through the cache, so the result is what a one-piece
    prefill computes (up to floating-point noise), and the rows take a step between
    two chunks (or in the same pass, app/engine/mixed.py) instead of waiting for the
    whole prompt. Once the prompt is in, the sequence either joins a batch as its
    last row (`join`) or, in mixed passes, goes on decoding here, one token a pass:
    a long sequence merged into short rows would widen all their caches to its length.
    """

    def __init__(self, model: CausalLM, prompt: Sequence[int], watch: HeadSelection | None):
        self._model = model
        self._prompt = list(prompt)
        self.watch = watch
        self.cache: DynamicCache | None = growing_cache(model, reserve=headroom(len(self._prompt)))
        self.done = 0  # tokens in the cache: the prompt's, then generated ones
        self.passes_left: int | None = None  # planned at its first chunk (app/engine/plan.py)

    @property
    def remaining(self) -> int:
        """Prompt tokens not yet prefilled."""
        return max(len(self._prompt) - self.done, 0)

    def part(self, budget: int, last_token: int | None) -> Part:
        """Its share of a mixed pass: up to `budget` prompt tokens, or, once the prompt
        is in, its latest generated token."""
        if self.remaining:
            end = min(self.done + max(budget, 1), len(self._prompt))
            last = end == len(self._prompt)
            return Part(self._own_cache(), self._prompt[self.done : end], self.done, last)
        if last_token is None:
            raise ValueError("a decoding sequence's part needs its latest token")
        return Part(self._own_cache(), [last_token], self.done, True)

    def _own_cache(self) -> DynamicCache:
        if self.cache is None:
            raise RuntimeError("the sequence has joined a batch, with its cache")
        return self.cache

    def fed(self, part: Part) -> None:
        """A mixed pass has put `part`'s tokens in the cache."""
        self.done += len(part.tokens)

    def roll_back(self) -> None:
        """Cut columns a failed pass may have added."""
        for layer in self._own_cache().layers:
            truncate(layer, min(columns_of(layer) or 0, self.done))

    @torch.inference_mode()
    def advance(self, tokens: int) -> Step | None:
        """Prefill the next `tokens` prompt tokens in a pass of their own; the Step once done."""
        start, end = self.done, min(self.done + max(tokens, 1), len(self._prompt))
        device = input_device(self._model)
        ids = torch.tensor([self._prompt[start:end]], device=device)
        positions = torch.arange(start, end, device=device)[None]
        last = end == len(self._prompt)
        decoder = base_decoder(self._model)
        if not last and decoder is not None:
            # Only the cache is wanted: skip the LM head (a vocabulary-sized matrix to read).
            decoder_class: type = type(decoder)  # (mypy takes no type[Module] as Hashable)
            decoder(
                ids,
                position_ids=positions,
                use_cache=True,
                **{cache_keyword(decoder_class): self.cache},
            )
            self.done = end
            return None
        watch = self.watch if last else None  # only the last query's attention is reported
        out = forward(self._model, ids, self.cache, None, positions, watch is not None)
        self.done = end
        if not last:
            return None
        attention = [last_rows(out.attentions, watch, 0, end) if watch is not None else None]
        return Step(out.logits[:, -1].float(), attention)

    def join(self, batch: DecodeBatch) -> None:
        """Add the sequence to `batch` as its last row (its cache is handed over)."""
        mask = torch.ones((1, self.done), dtype=torch.long, device=input_device(self._model))
        batch.merge(self._own_cache(), mask, [self.done], [self.watch])
        self.cache = None
