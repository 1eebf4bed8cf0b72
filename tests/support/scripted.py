"""A scripted stand-in for a causal LM and its tokenizer: no weights, exact outputs.

`ScriptedLM` follows the engine's `CausalLM` contract for real: it appends each
pass's "keys" to the KV cache it is given (the token ids themselves), reads a
row's history back from that cache, and answers with logits that put all the
mass on the next token of that row's script. A script entry of `FAIL` makes the
forward pass that would produce it raise, so a test can write "token, token,
failure" for one request while its batch-mates go on.

`LetterTokenizer` maps the letters a, b, c, ... to ids 0, 1, 2, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from transformers import GPT2Config

FAIL = -1  # in a script: the forward pass that would produce this token raises


class ScriptedFailure(RuntimeError):
    """Raised by a scripted forward pass."""


@dataclass
class ScriptedLM:
    """A causal LM whose next token, per row, is read from `scripts[prompt][step]`.

    A row whose prompt has no script (or whose script has run out) repeats its
    last token. `passes` records the rows of every forward pass.
    """

    scripts: dict[tuple[int, ...], list[int]]
    vocab_size: int = 8
    passes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = torch.device("cpu")
        self.config = GPT2Config(
            n_layer=1,
            n_head=1,
            n_embd=4,
            vocab_size=self.vocab_size,
            bos_token_id=None,
            eos_token_id=None,
        )
        self.config._attn_implementation = "sdpa"

    def set_attn_implementation(self, implementation: str) -> None:
        """Nothing to switch: this model computes no attention."""

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> SimpleNamespace:
        return self.forward(input_ids, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = True,
        logits_to_keep: int = 1,
        output_attentions: bool = False,
    ) -> SimpleNamespace:
        """Append the ids to the cache (as keys, +1 so that padding stays 0); script the logits."""
        self.passes.append(input_ids.shape[0])
        columns = input_ids.shape[1]
        mask = attention_mask[:, -columns:] if attention_mask is not None else 1
        keys = ((input_ids + 1) * mask).float()[:, None, :, None]  # [rows, 1 head, T, 1]
        history = torch.cat([_cached(past_key_values), keys], dim=2)
        nexts = [self._next(_ids(history[row, 0, :, 0])) for row in range(input_ids.shape[0])]
        if FAIL in nexts:
            raise ScriptedFailure(f"scripted failure for row {nexts.index(FAIL)}")
        past_key_values.update(keys, keys, 0)
        logits = torch.full((input_ids.shape[0], 1, self.vocab_size), -30.0)
        for row, token in enumerate(nexts):
            logits[row, 0, token] = 30.0
        return SimpleNamespace(logits=logits, attentions=None)

    def _next(self, history: list[int]) -> int:
        for prompt, script in self.scripts.items():
            if tuple(history[: len(prompt)]) == prompt:
                step = len(history) - len(prompt)
                if step < len(script):
                    return script[step]
        return history[-1]


def _cached(cache: Any) -> torch.Tensor:
    layer = cache.layers[0]
    keys = getattr(layer, "keys", None)
    if keys is None or keys.numel() == 0:
        return torch.zeros(0)
    return keys


def _ids(column: torch.Tensor) -> list[int]:
    """A row's token ids, read back from its cached keys (left padding is 0)."""
    return [int(v) - 1 for v in column.tolist() if v > 0]


class LetterTokenizer:
    """Letters a, b, c, ... are ids 0, 1, 2, ...; no special tokens."""

    all_special_ids: list[int] = []
    bos_token_id = None
    eos_token_id = None
    chat_template = None
    is_fast = False

    def __init__(self, vocab_size: int = 8) -> None:
        self._vocab_size = vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    def __call__(self, text: str, **kwargs: Any) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def encode(self, text: str) -> list[int]:
        """One id per letter."""
        return [ord(letter) - ord("a") for letter in text]

    def decode(self, token_ids: Sequence[int], **kwargs: Any) -> str:
        """One letter per id."""
        return "".join(chr(ord("a") + i) for i in token_ids)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The letters themselves."""
        return [self.decode([i]) for i in ids]
