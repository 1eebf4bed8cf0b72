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

    Members are declared no narrower than transformers 5.2x declares them on
    `PreTrainedModel`, so that every transformers model satisfies this protocol as it is
    (read-only properties where transformers has properties).
    """

    config: Any  # a transformers PretrainedConfig

    @property
    def device(self) -> torch.device: ...

    @property
    def base_model(self) -> torch.nn.Module:
        """The model without its LM head (the model itself for a model with none)."""
        ...

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> ForwardOutput: ...

    def set_attn_implementation(self, implementation: str, /) -> None: ...

    def num_parameters(self, only_trainable: bool = ..., exclude_embeddings: bool = ...) -> int:
        """Parameters of the model (without the embeddings' with `exclude_embeddings`)."""
        ...

    def get_input_embeddings(self) -> torch.nn.Module: ...

    # transformers leaves this unannotated: an nn.Module (the LM head, usually an
    # nn.Linear) or None for a model without one.
    def get_output_embeddings(self) -> Any: ...


def input_device(model: CausalLM) -> torch.device:
    """Where a pass's inputs (ids, masks, positions) go: the model's device, or for a model
    split by accelerate's device map, the device its hooks run the first module on (the
    model's first parameter may read `meta` there, its weights being on disk)."""
    hook = getattr(model, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is None:
        return model.device
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


class Tokenizer(Protocol):
    """The part of a transformers tokenizer the engine uses: decoding ids to text.

    Declared as `PreTrainedTokenizerBase` declares it: `decode` and `convert_ids_to_tokens`
    may answer a list (for a batch of sequences, or one id), so a caller that passes one
    list of ids narrows the answer itself; `decode_text` does that for `decode`.
    """

    @property
    def all_special_ids(self) -> list[int]: ...

    def decode(
        self, token_ids: list[int], skip_special_tokens: bool = ..., **kwargs: Any
    ) -> str | list[str]:
        """The text of `token_ids`; kwargs such as `clean_up_tokenization_spaces`."""
        ...

    def convert_ids_to_tokens(
        self, ids: list[int], skip_special_tokens: bool = ...
    ) -> str | list[str]:
        """The vocabulary's token string of each id (a list for a list of ids)."""
        ...


def decode_text(tokenizer: Tokenizer, token_ids: list[int], skip_special_tokens: bool) -> str:
    """`tokenizer.decode` of one sequence, as a str, without cleaning up spaces.

    Raises TypeError if the tokenizer answered something else (a list: a batch), which a
    transformers tokenizer does not do for a flat list of ids.
    """
    text = tokenizer.decode(
        token_ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )
    if not isinstance(text, str):
        raise TypeError(f"decode answered {type(text).__name__} for one sequence of ids")
    return text


@cache
def cache_keyword(model_class: type[Any]) -> str:
    """The keyword a model's forward takes its KV cache by.

    `model_class` is the class of a `CausalLM`: any class with a `forward` method (a
    transformers model class, or a test double). transformers 5.2x renamed
    `past_key_values` to `cache`; older model code keeps the old name.
    """
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
