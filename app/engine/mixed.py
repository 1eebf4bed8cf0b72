"""Mixed passes: the batch's decoding step and other sequences' tokens in one forward pass.

A forward pass costs at least one read of the model's weights. On a CPU, or a GPU at
small batches, that read is most of a decoding step, so a joining prompt's chunk run
as a pass of its own costs the running streams nearly a step more than its tokens'
own work. Packed into the same pass as their step, the chunk costs only its own
work; this is the "stall-free batching" of Sarathi-Serve (Agrawal et al.,
"Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve", OSDI
2024), which vLLM's chunked prefill also does.

The pass is one sequence, batch size 1: the batch rows' newest tokens, then each
other sequence's tokens (a prompt chunk, or one generated token of a sequence that
decodes outside the batch). The model runs unchanged; explicit position ids put
each token where it is in its own sequence, `MixedCache` files each layer's new
keys and values into the owners' caches, and `mixed_attention`, registered with
transformers' AttentionInterface, runs the model's own attention (SDPA) once for
the batch rows over their left-padded cache and once per other sequence over its
own cache. So each token attends to what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from app.engine.contract import CausalLM, cache_keyword, input_device
from app.engine.kvcache import filled

_NAME = "llmviz_mixed"
_SUPPORTED = ("sdpa",)  # implementations that take any 4D mask and any key length
_current: ContextVar[_Pass | None] = ContextVar("llmviz_mixed_pass", default=None)


def supports(model: CausalLM) -> bool:
    """Whether mixed passes can run on `model`: a transformers model (its attention goes
    through AttentionInterface) using SDPA. The caller checks for sliding windows."""
    return isinstance(model, PreTrainedModel) and model.config._attn_implementation in _SUPPORTED


@dataclass
class Part:
    """One sequence's share of a mixed pass: `tokens` fed after its `cache`'s columns."""

    cache: Cache  # a batch of one, with the sequence's keys and values so far
    tokens: list[int]
    start: int  # the sequence's length before this pass (its first token's position)
    wants_logits: bool  # whether the pass should give its last token's logits


@dataclass
class BatchPart:
    """The decode batch's share of a mixed pass: one token per row, after its left-padded cache."""

    cache: Cache  # [rows, heads, columns, head_dim] per layer
    tokens: list[int]
    positions: list[int]  # each row's length before this pass
    mask: torch.Tensor  # [rows, columns + 1]: 1 = real token, 0 = padding


class _Pass:
    """What `MixedCache.update` files and `mixed_attention` reads, for one forward pass."""

    def __init__(self, rows: BatchPart | None, parts: Sequence[Part], implementation: str) -> None:
        self.rows, self.parts = rows, list(parts)
        self.attend = ALL_ATTENTION_FUNCTIONS[implementation]
        self.layer = -1  # the layer whose keys were filed last: the next to attend
        count = len(rows.tokens) if rows else 0
        self.bounds = [(0, count)]  # the query slice of the rows, then of each part
        for part in self.parts:
            self.bounds.append((self.bounds[-1][1], self.bounds[-1][1] + len(part.tokens)))
        self.row_mask = None
        if rows is not None and not bool(rows.mask.all()):
            self.row_mask = rows.mask.bool()[:, None, None, :]  # [rows, 1, 1, columns]
        self.part_masks = [_causal_after(part.start, len(part.tokens), rows) for part in self.parts]


def _causal_after(start: int, count: int, rows: BatchPart | None) -> torch.Tensor | None:
    """[1, 1, count, start + count]: query i sees keys up to start + i; None if plain causal."""
    if start == 0:
        return None  # SDPA's own causal mask, aligned at the top left
    device = rows.mask.device if rows is not None else None
    keys = torch.arange(start + count, device=device)
    queries = torch.arange(start, start + count, device=device)
    return (keys[None, :] <= queries[:, None])[None, None]


class MixedCache(Cache):
    """The cache a mixed pass hands the model: it files each layer's new keys and values
    into the batch's cache and each part's cache, and returns them unchanged (the
    attention reads the owners' caches)."""

    def __init__(self, state: _Pass) -> None:
        super().__init__(layers=[])
        self._state = state

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """File [1, kv_heads, tokens, head_dim] new states with their owners."""
        state = self._state
        (first, end), *part_bounds = state.bounds
        if state.rows is not None:
            # [1, heads, rows, dim] -> [rows, heads, 1, dim]: one new column per row.
            keys = key_states[0, :, first:end].transpose(0, 1).unsqueeze(2)
            values = value_states[0, :, first:end].transpose(0, 1).unsqueeze(2)
            state.rows.cache.update(keys, values, layer_idx)
        for part, (start, stop) in zip(state.parts, part_bounds, strict=True):
            part.cache.update(
                key_states[:, :, start:stop], value_states[:, :, start:stop], layer_idx
            )
        state.layer = layer_idx
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always given explicitly


def mixed_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention for a mixed pass: query [1, heads, tokens, head_dim] -> [1, tokens, heads, dim].

    The rows' queries attend over the batch's cache, each part's over its own cache,
    through the model's own attention function.
    """
    state = _current.get()
    if state is None:
        raise RuntimeError("mixed_attention runs only inside mixed_forward")
    (first, end), *part_bounds = state.bounds
    outputs = []
    if state.rows is not None:
        keys, values = filled(state.rows.cache.layers[state.layer])
        queries = query[0, :, first:end].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, dim]
        out, _ = state.attend(module, queries, keys, values, state.row_mask, **kwargs)
        # out: [rows, 1, heads, dim]
        outputs.append(out.transpose(0, 1))
    for part, mask, (start, stop) in zip(state.parts, state.part_masks, part_bounds, strict=True):
        keys, values = filled(part.cache.layers[state.layer])
        out, _ = state.attend(module, query[:, :, start:stop], keys, values, mask, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(_NAME, mixed_attention)


@contextmanager
def _mixed(model: CausalLM, state: _Pass) -> Iterator[None]:
    previous = model.config._attn_implementation
    token = _current.set(state)
    model.set_attn_implementation(_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _current.reset(token)


@torch.inference_mode()
def mixed_forward(model: CausalLM, rows: BatchPart | None, parts: Sequence[Part]) -> torch.Tensor:
    """Run the rows' step and the parts' tokens in one pass; the caches are updated.

    Returns float logits [rows + parts that want logits, vocab]: the rows' next-token
    logits in row order, then each such part's last token's. On an exception the
    caches may hold some layers' new columns: the caller cuts them back.
    """
    device = input_device(model)
    state = _Pass(rows, parts, model.config._attn_implementation)
    ids, positions = [], []
    if rows is not None:
        ids += rows.tokens
        positions += rows.positions
    keep = list(range(len(ids)))
    for part, (_, stop) in zip(parts, state.bounds[1:], strict=True):
        ids += part.tokens
        positions += range(part.start, part.start + len(part.tokens))
        if part.wants_logits:
            keep.append(stop - 1)
    # A 4D mask is taken as given, so transformers builds none; the attention makes its own.
    unused_mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device)
    with _mixed(model, state):
        out = model(
            torch.tensor([ids], device=device),
            attention_mask=unused_mask,
            position_ids=torch.tensor([positions], device=device),
            use_cache=True,
            logits_to_keep=torch.tensor(keep, dtype=torch.long, device=device),  # may be empty
            **{cache_keyword(type(model)): MixedCache(state)},
        )
    return out.logits[0].float()


def padded_mask(mask: torch.Tensor) -> torch.Tensor:
    """The batch's [rows, columns] mask with this step's column added."""
    return F.pad(mask, (0, 1), value=1)
