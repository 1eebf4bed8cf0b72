"""What the engine needs from a model and a tokenizer, as typed protocols.

The engine is written against these, not against concrete classes: any
transformers causal LM (`PreTrainedModel`) and tokenizer
(`PreTrainedTokenizerBase`) satisfy them, and so does the scripted fake model
of the tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache
from typing import Any, Protocol

import torch


class ForwardOutput(Protocol):
    """A forward pass's result (transformers' `CausalLMOutputWithPast`)."""

    logits: torch.Tensor  # [rows, positions, vocab]
    attentions: Sequence[torch.Tensor] | None  # per layer: [rows, heads, queries, keys]


class CausalLM(Protocol):
    """A decoder-only language model, called the way `DecodeBatch` calls it.

    The call takes `input_ids` [rows, positions], `attention_mask` [rows, columns]
    (or None), `position_ids` [rows, positions] (or None), `use_cache=True`,
    `logits_to_keep` (a count, or the positions to keep), `output_attentions`, and
    the KV cache (a `DynamicCache`) by the keyword the model class names (`cache` or
    `past_key_values`); it appends this pass's keys and values to that cache.
    """

    device: torch.device
    config: Any  # a transformers PretrainedConfig

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> ForwardOutput: ...

    def set_attn_implementation(self, implementation: str) -> None: ...


class Tokenizer(Protocol):
    """The part of a transformers tokenizer the engine uses: decoding ids to text."""

    all_special_ids: list[int]

    def decode(
        self,
        token_ids: Sequence[int],
        skip_special_tokens: bool = ...,
        clean_up_tokenization_spaces: bool | None = ...,
    ) -> str: ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...


@cache
def cache_keyword(model_class: type) -> str:
    """The keyword a model's forward takes its KV cache by.

    transformers 5.2x renamed `past_key_values` to `cache`; older model code keeps the old name.
    """
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
