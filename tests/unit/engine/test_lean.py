"""Lean decoding steps (app/engine/lean.py): bit for bit transformers' step, or not used."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.engine.attention import HeadSelection
from app.engine.batch import DecodeBatch
from app.engine.lean import LeanStep
from app.models.packing import pack_linear_layers


def _load(model_root, model_id, **options):
    return AutoModelForCausalLM.from_pretrained(model_root / model_id, **options).eval()


@pytest.mark.parametrize(("model_id", "lean"), [("tiny-gpt2", True), ("tiny-llama", False)])
def test_gpt2_has_a_lean_step_and_other_architectures_do_not(model_root, model_id, lean):
    assert (LeanStep.make(_load(model_root, model_id)) is not None) is lean


def test_a_model_on_eager_attention_keeps_transformers_forward(model_root):
    assert LeanStep.make(_load(model_root, "tiny-gpt2", attn_implementation="eager")) is None


@pytest.mark.parametrize("packed", [False, True])
def test_lean_steps_equal_transformers_steps_bit_for_bit(model_root, packed):
    """Rows of different lengths (padding), greedy tokens fed back, a row leaving and new
    rows joining: every step's logits are equal to transformers' own."""
    model = _load(model_root, "slow-gpt2")
    if packed:
        assert pack_linear_layers(model) > 0
    lean, plain = DecodeBatch(model, LeanStep.make(model)), DecodeBatch(model)
    assert lean._lean is not None
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    tokens = [0, 0, 0]
    for batch in (lean, plain):
        tokens = batch.prefill(prompts, [None] * 3).logits.argmax(-1).tolist()
    for step in range(12):
        if step == 4:
            for batch in (lean, plain):
                batch.remove([1])
            tokens.pop(1)
        if step == 8:
            for batch in (lean, plain):
                joiner = DecodeBatch(model)
                joiner.prefill([[20, 21, 22, 23, 24, 25, 26, 27, 28, 29]], [None])
                batch.concatenate(joiner)
            tokens.append(3)
        expected = plain.step(tokens).logits
        got = lean.step(tokens).logits
        assert torch.equal(got, expected), f"step {step}"
        tokens = expected.argmax(-1).tolist()


def test_a_watched_row_takes_transformers_forward(model_root, monkeypatch):
    model = _load(model_root, "tiny-gpt2")
    batch = DecodeBatch(model, LeanStep.make(model))
    assert batch._lean is not None

    def refuse(*args, **kwargs):
        raise AssertionError("the lean step ran for a watched row")

    monkeypatch.setattr(LeanStep, "__call__", refuse)
    batch.prefill([[5, 6, 7]], [HeadSelection(layers=(0,), heads=None)])
    step = batch.step([8])
    assert step.attention[0] is not None  # the row's attention, which a lean step has not


def test_a_lean_step_that_differs_is_not_used(model_root, monkeypatch, caplog):
    model = _load(model_root, "tiny-gpt2")
    real = LeanStep.__call__

    def off_by_a_little(self, *args):
        out = real(self, *args)
        out.logits = out.logits + 1e-6
        return out

    monkeypatch.setattr(LeanStep, "__call__", off_by_a_little)
    assert LeanStep.make(model) is None
    assert "differs from transformers' forward" in caplog.text


def test_a_failed_lean_step_leaves_the_cache_as_it_was(model_root):
    model = _load(model_root, "tiny-gpt2")
    lean, plain = DecodeBatch(model, LeanStep.make(model)), DecodeBatch(model)
    assert lean._lean is not None
    for batch in (lean, plain):
        batch.prefill([[5, 6, 7], [8, 9]], [None, None])
    second_layer = model.base_model.h[1].mlp.c_fc

    def fail(module, args):
        raise RuntimeError("out of memory (simulated)")

    handle = second_layer.register_forward_pre_hook(fail)  # after layer 0 filed its keys
    with pytest.raises(RuntimeError, match="simulated"):
        lean.step([10, 11])
    handle.remove()
    assert torch.equal(lean.step([10, 11]).logits, plain.step([10, 11]).logits)
