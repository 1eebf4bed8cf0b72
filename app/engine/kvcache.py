"""KV-cache storage that grows in place, and the left-padded stacking of two caches.

transformers' `DynamicLayer` appends a step's keys and values with `torch.cat`,
which copies the layer's whole cache every step: on a CPU, at a few rows of a
thousand tokens, that copy costs more than the step's own arithmetic. A
`GrowingLayer` keeps its keys and values in buffers with room to spare and
writes each step's columns into them, so a step costs the same at any length;
it reallocates, with headroom, only when the room runs out (amortized, as a
Python list grows).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.engine.contract import CausalLM


def headroom(columns: int) -> int:
    """Columns to allocate for a cache that holds `columns` and will grow: a quarter more, at
    least 32 (a few reallocations over a long generation, each a copy of the cache)."""
    return columns + max(32, columns // 4)


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys` and `values` are views of larger buffers.

    `keys` and `values` are [rows, heads, columns, head_dim], as in DynamicLayer.
    Assigning them (code that cuts or reorders the cache does) adopts the tensor as
    the new buffer, with no room left; the next `update` makes room.
    """

    def __init__(self, reserve: int = 0) -> None:
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._columns = 0
        self._reserve = reserve  # columns to allocate at the first update (a prompt's length)
        super().__init__()

    def _filled(self, buffer: torch.Tensor | None) -> torch.Tensor | None:
        return None if buffer is None else buffer[..., : self._columns, :]

    @property
    def keys(self) -> torch.Tensor | None:
        return self._filled(self._key_buffer)

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._key_buffer = tensor
        self._columns = 0 if tensor is None else tensor.shape[-2]

    @property
    def values(self) -> torch.Tensor | None:
        return self._filled(self._value_buffer)

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._value_buffer = tensor  # set after `keys`, with the same columns

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, columns: int) -> None:
        """Take buffers whose first `columns` columns are the cache (the rest is room)."""
        self._key_buffer, self._value_buffer, self._columns = keys, values, columns
        self.is_initialized = True
        self.device = keys.device

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new [rows, heads, new, head_dim] states after the cached ones; return all."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._columns, self._columns + key_states.shape[-2]
        keys, values = self._key_buffer, self._value_buffer
        if keys is None or values is None or keys.shape[-2] < end:
            capacity = max(headroom(end), self._reserve)
            keys = self._key_buffer = _regrow(keys, start, key_states, capacity)
            values = self._value_buffer = _regrow(values, start, value_states, capacity)
        keys[..., start:end, :] = key_states
        values[..., start:end, :] = value_states
        self._columns = end
        return keys[..., :end, :], values[..., :end, :]

    def get_seq_length(self) -> int:
        return self._columns

    def room(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """For a step written from outside torch (app/engine/kernels): the key and value
        buffers [rows, heads, capacity, head_dim], with room for one more column, their last
        dimension contiguous and their strides alike, and the column to write. `advance`
        then counts it.

        Raises RuntimeError for a layer never filled.
        """
        keys, values, column = self._key_buffer, self._value_buffer, self._columns
        if keys is None or values is None:
            raise RuntimeError("the cache layer holds no keys yet")
        if keys.shape[-2] <= column or keys.stride(-1) != 1 or values.stride() != keys.stride():
            capacity = headroom(column + 1)
            keys = self._key_buffer = _regrow(keys, column, keys, capacity)
            values = self._value_buffer = _regrow(values, column, values, capacity)
        return keys, values, column

    def advance(self) -> None:
        """Count the column `room` gave, now written."""
        self._columns += 1

    def truncate(self, columns: int) -> None:
        """Forget the columns past `columns` (the room stays)."""
        self._columns = min(self._columns, columns)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep these rows, room included."""
        if self._key_buffer is not None:
            self._key_buffer = self._key_buffer[indices]
        if self._value_buffer is not None:
            self._value_buffer = self._value_buffer[indices]


def _regrow(
    buffer: torch.Tensor | None, columns: int, like: torch.Tensor, capacity: int
) -> torch.Tensor:
    """A buffer of `capacity` columns holding `buffer`'s first `columns` columns."""
    rows, heads, _, width = like.shape
    # Zeros, not garbage: a masked-out column still meets the attention weights' zeros,
    # and 0 * NaN would be NaN.
    grown = like.new_zeros((rows, heads, capacity, width))
    if buffer is not None and columns:
        grown[..., :columns, :] = buffer[..., :columns, :]
    return grown


def growing_cache(model: CausalLM, reserve: int = 0) -> DynamicCache:
    """A DynamicCache for `model` whose full-attention layers grow in place.

    Sliding-window and other special layers stay as transformers made them.
    `reserve` columns, when known (a prompt's length), are allocated at once.
    """
    cache = DynamicCache(config=model.config)
    cache.layers = [
        GrowingLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


def full_attention(model: CausalLM) -> bool:
    """Whether every layer of `model` attends to the whole sequence (no sliding window)."""
    return all(isinstance(layer, GrowingLayer) for layer in growing_cache(model).layers)


def stack_left_padded(first: GrowingLayer, second: GrowingLayer) -> None:
    """Put `second`'s rows after `first`'s, both left-padded to the wider one, in `first`.

    One allocation and one copy of each, with room to grow: merging a long prompt into a
    batch widens every row's cache, so this copy sits on a running stream's gap.
    """
    columns = max(first.get_seq_length(), second.get_seq_length())
    (first_keys, first_values), (second_keys, second_values) = filled(first), filled(second)
    keys = _stack(first_keys, second_keys, columns, headroom(columns))
    values = _stack(first_values, second_values, columns, headroom(columns))
    first.adopt(keys, values, columns)


def filled(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A key-value cache layer's keys and values, [rows, heads, columns, head_dim] each.

    Raises TypeError for a layer that holds none (not filled yet, or no key-value layer:
    a linear-attention model's state).
    """
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError(f"{type(layer).__name__} holds no keys and values")
    return keys, values


def _stack(a: torch.Tensor, b: torch.Tensor, columns: int, capacity: int) -> torch.Tensor:
    """[rows of a + rows of b, heads, capacity, head_dim], each right-aligned at `columns`."""
    out = a.new_zeros((a.shape[0] + b.shape[0], a.shape[1], capacity, a.shape[3]))
    out[: a.shape[0], :, columns - a.shape[2] : columns] = a
    out[a.shape[0] :, :, columns - b.shape[2] : columns] = b
    return out
