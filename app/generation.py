"""The decoding loop: prompt ids in, sampled tokens out, one step at a time."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache

import torch
from transformers import DynamicCache

from app.attention import eager_attention, last_rows
from app.sampling import Choice, Sampler, SamplingParams


@dataclass(frozen=True)
class AttentionWatch:
    """Report, with each token, the attention of the position that predicted it."""

    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None  # None: all heads


@torch.inference_mode()
def sample_tokens(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    eos_ids: frozenset[int],
    watch: AttentionWatch | None = None,
) -> Iterator[Choice]:
    """Yield each generated token; stops at end-of-sequence unless told to ignore it.

    The caller may stop iterating between two tokens: that is how a request is
    cancelled, and the KV cache is dropped with the generator.
    """
    device = model.device
    sampler = Sampler(params, prompt_ids, device)
    # The KV cache is updated in place by every forward pass.
    kv = {_cache_argument(type(model)): DynamicCache(config=model.config)}
    # Only the last position's logits are needed: skip the vocabulary projection elsewhere.
    out = _forward(model, torch.tensor([list(prompt_ids)], device=device), kv, watch, 1)
    for step in range(params.max_new_tokens):
        choice = sampler.choose(out.logits[0, -1])
        if watch is not None:
            choice = replace(choice, attention=last_rows(out.attentions, watch.layers, watch.heads))
        yield choice
        token = choice.token_id
        if (token in eos_ids and not params.ignore_eos) or step + 1 == params.max_new_tokens:
            return
        out = _forward(model, torch.tensor([[token]], device=device), kv, watch, 0)


def _forward(model, input_ids, kv, watch: AttentionWatch | None, logits_to_keep: int):
    # Eager attention only around this request's own passes: other requests keep SDPA.
    with eager_attention(model) if watch is not None else nullcontext():
        return model(
            input_ids,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_attentions=watch is not None,
            **kv,
        )


@cache
def _cache_argument(model_class: type) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache`; older model code keeps the old name.
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
