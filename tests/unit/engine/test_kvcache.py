"""GrowingLayer: a KV cache layer that appends in place, with room to spare."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from app.engine.kvcache import GrowingLayer, headroom, stack_left_padded


def _states(rows: int, columns: int, fill: float) -> torch.Tensor:
    return torch.full((rows, 2, columns, 4), fill)


def test_updates_append_in_place_until_the_room_runs_out():
    layer = GrowingLayer()
    keys, values = layer.update(_states(2, 5, 1.0), _states(2, 5, -1.0))
    assert keys.shape == (2, 2, 5, 4) and layer.get_seq_length() == 5
    buffer = layer._key_buffer
    assert buffer.shape[-2] == headroom(5)
    for step in range(headroom(5) - 5):  # steps that fit write into the same buffer
        keys, values = layer.update(_states(2, 1, 2.0 + step), _states(2, 1, 0.0))
        assert layer._key_buffer is buffer
    layer.update(_states(2, 1, 9.0), _states(2, 1, 9.0))  # one more: a bigger buffer
    assert layer._key_buffer is not buffer and layer.get_seq_length() == headroom(5) + 1
    keys = layer.keys
    assert keys[0, 0, :5, 0].tolist() == [1.0] * 5
    assert keys[0, 0, 5:, 0].tolist() == [2.0 + s for s in range(headroom(5) - 5)] + [9.0]
    assert layer.values[1, 1, :5, 3].tolist() == [-1.0] * 5


def test_it_reads_as_the_dynamic_layer_it_replaces():
    growing, dynamic = GrowingLayer(), DynamicLayer()
    for columns in (7, 1, 1, 3):
        states = torch.randn(3, 2, columns, 4), torch.randn(3, 2, columns, 4)
        got, want = growing.update(*states), dynamic.update(*states)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    index = torch.tensor([2, 0])
    growing.batch_select_indices(index)
    dynamic.batch_select_indices(index)
    assert torch.equal(growing.keys, dynamic.keys) and torch.equal(growing.values, dynamic.values)
    growing.truncate(8)
    assert torch.equal(growing.keys, dynamic.keys[..., :8, :])


def test_a_reserved_layer_takes_a_whole_prompt_without_reallocating():
    layer = GrowingLayer(reserve=100)
    layer.update(_states(1, 10, 1.0), _states(1, 10, 1.0))
    buffer = layer._key_buffer
    for _ in range(9):
        layer.update(_states(1, 10, 1.0), _states(1, 10, 1.0))
    assert layer._key_buffer is buffer and layer.get_seq_length() == 100


def test_stacking_left_pads_the_shorter_rows_with_zeros_and_keeps_room():
    first, second = GrowingLayer(), GrowingLayer()
    first.update(_states(2, 3, 1.0), _states(2, 3, 1.0))
    second.update(_states(1, 6, 2.0), _states(1, 6, 2.0))
    stack_left_padded(first, second)
    assert first.keys.shape == (3, 2, 6, 4) and first._key_buffer.shape[-2] == headroom(6)
    assert first.keys[0, 0, :, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert first.keys[2, 0, :, 0].tolist() == [2.0] * 6
