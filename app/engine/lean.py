"""Lean decoding steps: the same arithmetic as transformers' forward, without its Python.

A decoding step of a small model on a CPU is mostly interpreter time: transformers'
forward runs through module calls, output containers, mask builders and deprecation
wrappers around a few dozen tensor operations. For rounds that capture nothing (no
watched attention), `lean_step` runs the model's own modules (its embeddings, norms,
linear layers, activation) in the order its forward does, with SDPA called directly.
The result is the same tensors, bit for bit: `LeanStep.make` proves it on the model
itself (the model's worker calls it as the model loads) before the path is used, and a
model it does not match keeps transformers' forward. Measured on the demo model (2-core
CPU, one row, in a thread as the worker runs it): 3.9 -> 3.2 ms a step.

A step of exactly one unpadded row (a single stream) goes further where it can: the
fused step in C (app/engine/kernels), the whole step in one OpenMP region with the
weights read at the machine's memory rate. Its logits are not bit for bit these (its
sums run in another order): `make` checks them against this step's within 1e-4 of the
logits' scale, and the setting LLMVIZ_FUSED_STEP=0 turns it off.

Only GPT-2's architecture (`GPT2LMHeadModel`: the demo models and GPT-2) has a lean step;
every other model, and every pass that captures internals or mixes in prompt chunks,
runs transformers' forward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from app.engine.contract import CausalLM
from app.engine.kernels import gpt2
from app.engine.kvcache import GrowingLayer

log = logging.getLogger(__name__)


@dataclass
class LeanOutput:
    """What a lean step gives back, shaped as transformers' output: logits [rows, 1, vocab]
    (no attentions: a lean step runs only where none is watched)."""

    logits: torch.Tensor
    attentions: Sequence[torch.Tensor] | None = None


class LeanStep:
    """One decoding step of a GPT-2 model: each row's newest token in, its logits out."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model: Any = model  # GPT2LMHeadModel: its submodules are read by name below
        self._body: Any = model.transformer
        self.fused: gpt2.FusedStep | None = None  # for one unpadded row, where it agrees

    @classmethod
    def make(cls, model: object, fused: bool = True) -> LeanStep | None:
        """A lean step for `model`, or None when it has none or it does not reproduce
        transformers' step exactly on a probe (unpadded and padded rows). `fused`: also
        use the fused step for one row where it builds and agrees (LLMVIZ_FUSED_STEP)."""
        if not _supported(model):
            return None
        if not isinstance(model, torch.nn.Module):
            return None
        lean = cls(model)
        try:
            if not lean._reproduces():
                log.warning("the lean decoding step differs from transformers' forward: not used")
                return None
        except Exception as exc:  # an unexpected layout: transformers' forward will do
            log.warning("no lean decoding step for this model (%s)", exc)
            return None
        if fused:
            lean.fused = lean._checked(gpt2.make(model))
        return lean

    @torch.inference_mode()
    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        mask: torch.Tensor | None,
    ) -> LeanOutput:
        """ids, positions: [rows, 1]; mask: [rows, columns] (1 = real token, this step's
        column included) or None when no row is padded. Appends this step's keys and
        values to `cache`, as transformers' forward does. (The fused step, where a batch
        takes it, is `fused`: see DecodeBatch.step.)"""
        body = self._body
        attend = None if mask is None else mask.bool()[:, None, None, :]  # [rows, 1, 1, columns]
        hidden = body.wte(ids) + body.wpe(positions)  # [rows, 1, d_model]
        for index, block in enumerate(body.h):
            attention = block.attn
            query, key, value = attention.c_attn(block.ln_1(hidden)).split(
                attention.split_size, dim=2
            )
            heads = (*query.shape[:-1], -1, attention.head_dim)
            query, key, value = (t.view(heads).transpose(1, 2) for t in (query, key, value))
            layer: Any = cache.layers[index]  # a key-value layer: GPT-2 has no other kind
            key, value = layer.update(key, value)
            mixed = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attend, scale=attention.scaling
            )  # [rows, heads, 1, head_dim]
            mixed = mixed.transpose(1, 2).reshape(*hidden.shape[:-1], -1)
            hidden = hidden + attention.c_proj(mixed)
            mlp = block.mlp
            hidden = hidden + mlp.c_proj(mlp.act(mlp.c_fc(block.ln_2(hidden))))
        return LeanOutput(self._model.lm_head(body.ln_f(hidden)))

    @torch.inference_mode()
    def _reproduces(self) -> bool:
        """Whether steps equal transformers' steps bit for bit: two rows, one padded, then one
        row alone."""
        from app.engine.batch import DecodeBatch  # batch imports this module

        model: CausalLM = self._model
        vocab = self._body.wte.weight.shape[0]  # probe ids within it (nano-sort has 3)
        for prompts, tokens in (([[1, 2, 3, 4, 5], [3, 4]], [6, 7]), ([[1, 2]], [3])):
            prompts = [[t % vocab for t in prompt] for prompt in prompts]
            tokens = [t % vocab for t in tokens]
            reference, lean = DecodeBatch(model), DecodeBatch(model)
            for batch in (reference, lean):
                batch.prefill(prompts, [None] * len(prompts))
            expected = reference.step(tokens).logits
            cache, mask = lean._state()
            mask = F.pad(mask, (0, 1), value=1)
            ids = torch.tensor([[t] for t in tokens])
            positions = torch.tensor([[len(p)] for p in prompts])
            padded = mask if bool((mask == 0).any()) else None
            got = self(ids, positions, cache, padded).logits[:, -1].float()
            if not torch.equal(got, expected):
                return False
        return True

    @torch.inference_mode()
    def _checked(self, fused: gpt2.FusedStep | None) -> gpt2.FusedStep | None:
        """`fused` if its logits stay within 1e-4 of the logits' scale of this step's over a
        prefill and four steps of one row (the cache written and read back), else None."""
        from app.engine.batch import DecodeBatch  # batch imports this module

        if fused is None:
            return None
        vocab = self._body.wte.weight.shape[0]
        tokens = [token % vocab for token in range(1, 10)]
        eager, native = DecodeBatch(self._model), DecodeBatch(self._model)
        for batch in (eager, native):
            batch.prefill([tokens[:5]], [None])
        try:
            for position, token in enumerate(tokens[5:], start=5):
                ids, positions = torch.tensor([[token]]), torch.tensor([[position]])
                expected = self(ids, positions, eager._state()[0], None).logits[:, -1]
                got = fused(token, position, native._state()[0])
                scale = max(1.0, float(expected.abs().max()))
                if not bool((got - expected).abs().max() <= 1e-4 * scale):
                    log.warning("the fused decoding step's logits differ from PyTorch's: not used")
                    return None
        except (ValueError, RuntimeError, IndexError) as exc:  # a model of under 9 positions
            log.warning("no fused decoding step for this model (%s)", exc)
            return None
        return fused


def fused_candidate(model: object) -> bool:
    """Whether `model` may get a fused step (its loader then keeps plain weights for it)."""
    return _supported(model) and gpt2.computes(model)


def fused_takes(cache: DynamicCache) -> bool:
    """Whether the fused step can write `cache` (every layer a GrowingLayer)."""
    return all(type(layer) is GrowingLayer for layer in cache.layers)


def _supported(model: object) -> bool:
    """GPT-2's causal LM with self-attention only, SDPA, and attention as its forward runs it
    for a cached step (no reordered, upcast attention, which only eager attention takes),
    loaded whole on one device."""
    config = getattr(model, "config", None)
    return (
        type(model).__name__ == "GPT2LMHeadModel"
        and config is not None
        and config._attn_implementation == "sdpa"
        and not getattr(config, "add_cross_attention", False)
        and not getattr(model, "training", True)
        # Split by accelerate's device map: the hooks that move a block's inputs and read
        # its offloaded weights run in the block's forward, which a lean step bypasses.
        and getattr(model, "_hf_hook", None) is None
    )
