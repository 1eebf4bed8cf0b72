"""The decoding loop: prompt ids in, sampled token ids out, one step at a time."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from functools import cache

import torch
from transformers import DynamicCache

from app.sampling import Choice, Sampler, SamplingParams


@torch.inference_mode()
def sample_tokens(
    model: torch.nn.Module, prompt_ids: list[int], params: SamplingParams, eos_ids: frozenset[int]
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
    out = model(torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1, **kv)
    for step in range(params.max_new_tokens):
        choice = sampler.choose(out.logits[0, -1])
        yield choice
        token = choice.token_id
        if (token in eos_ids and not params.ignore_eos) or step + 1 == params.max_new_tokens:
            return
        out = model(torch.tensor([[token]], device=device), use_cache=True, **kv)


@cache
def _cache_argument(model_class: type) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache`; older model code keeps the old name.
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
