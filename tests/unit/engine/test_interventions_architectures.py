"""Interventions on every architecture family the server loads beyond GPT-2 and Llama
(test_interventions.py): Gemma-2 (a head width of its own, soft-capping), Phi-3, Phi-1/2
(attention and MLP side by side, `dense` projection), Mistral and Qwen2 (grouped-query),
each a tiny random model built from its config, against the same changes made another way."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from app.engine.interventions import Intervention, InterventionSet, decoder_blocks, out_projection

SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES = {
    "gemma2": (Gemma2ForCausalLM, Gemma2Config, {"head_dim": 24}),  # heads × 24 ≠ 64
    "phi3": (Phi3ForCausalLM, Phi3Config, {}),
    "phi": (PhiForCausalLM, PhiConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
}
IDS = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 40]])


def _model(family: str):
    cls, config, extra = FAMILIES[family]
    torch.manual_seed(0)
    return cls(config(**SHAPE, **extra)).eval()


@torch.inference_mode()
def _logprobs(model) -> torch.Tensor:
    return model(IDS).logits[0, -1].float().log_softmax(-1)


@torch.inference_mode()
def _with(model, item: Intervention) -> torch.Tensor:
    with InterventionSet([item]).applied(model):
        return _logprobs(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_ablation_equals_zeroing_its_columns_of_the_output_projection(family):
    model = _model(family)
    reference = copy.deepcopy(model)
    projection = out_projection(decoder_blocks(reference)[1])
    width = projection.in_features // model.config.num_attention_heads
    with torch.no_grad():
        projection.weight[:, 3 * width : 4 * width] = 0
    got = _with(model, Intervention("ablate_head", 1, head=3))
    torch.testing.assert_close(got, _logprobs(reference), atol=3e-4, rtol=0)
    assert (got - _logprobs(model)).abs().max() > 1e-4


class _Zero(torch.nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_mlp_ablation_equals_an_mlp_of_zeros(family):
    model = _model(family)
    reference = copy.deepcopy(model)
    decoder_blocks(reference)[2].mlp = _Zero()
    got = _with(model, Intervention("ablate_mlp", 2))
    torch.testing.assert_close(got, _logprobs(reference), atol=3e-4, rtol=0)
    assert (got - _logprobs(model)).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_equals_adding_to_the_previous_blocks_output(family):
    model = _model(family)
    vector = torch.linspace(-2, 2, model.config.hidden_size)

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    handle = decoder_blocks(model)[1].register_forward_hook(hook)
    try:
        expected = _logprobs(model)
    finally:
        handle.remove()
    got = _with(model, Intervention("steer", 2, vector=tuple(vector.tolist())))
    torch.testing.assert_close(got, expected, atol=3e-4, rtol=0)
