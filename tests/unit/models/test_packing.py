"""Linear layers packed for oneDNN: the same outputs, every layer replaced, and when not to pack."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from app.config import Settings
from app.engine.contract import cache_keyword
from app.engine.pace import keys_per_token
from app.models import packing
from app.models.loading import load
from app.models.packing import PackedLinear, pack_linear_layers
from app.models.resolution import ModelSpec
from tests.support.compiler import require_compiler


def _load(model_root, model_id, **options):
    return AutoModelForCausalLM.from_pretrained(model_root / model_id, **options).eval()


def _linear_layers(model) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) in (nn.Linear, Conv1D)]


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
def test_packed_layers_give_the_same_logits(model_root, model_id):
    """GPT-2's Conv1D layers (weights stored transposed) and Llama's nn.Linear layers, the LM
    head included: prefill logits and a cached decoding step match the unpacked model."""
    reference = _load(model_root, model_id)
    model = _load(model_root, model_id)
    layers = len(_linear_layers(model))
    assert layers > 0
    ids = torch.randint(
        0, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1)
    )

    assert pack_linear_layers(model) == layers
    assert _linear_layers(model) == []
    assert isinstance(model.get_output_embeddings(), PackedLinear)
    with torch.inference_mode():
        for m in (reference, model):
            out = m(ids[:, :10], use_cache=True)
            step = m(ids[:, 10:], **{cache_keyword(type(m)): out.past_key_values})
            m.last = (out.logits, step.logits)
    for expected, got in zip(reference.last, model.last, strict=True):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.equal(model.last[0], torch.zeros_like(model.last[0]))


def test_a_tied_head_gets_a_packed_copy_and_the_embedding_stays(model_root):
    model = _load(model_root, "tiny-gpt2")
    embedding = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embedding  # tied as loaded
    before = embedding.clone()
    pack_linear_layers(model)
    assert model.get_input_embeddings().weight is embedding
    assert model.get_input_embeddings().weight.layout == torch.strided
    assert torch.equal(embedding, before)
    assert model.get_output_embeddings().weight is not embedding


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
def test_packing_keeps_the_prefill_cost_model(model_root, model_id):
    """K counts the layers' parameters, neither the embedding nor the LM head, packed or not."""
    model = _load(model_root, model_id)
    expected = keys_per_token(model)
    config = model.config
    layers = (
        sum(p.numel() for p in model.model.layers.parameters())
        if model_id == "tiny-llama"
        else (sum(p.numel() for p in model.transformer.h.parameters()))
    )
    assert expected == pytest.approx(
        layers / (2 * config.num_hidden_layers * config.hidden_size), rel=0.05
    )
    pack_linear_layers(model)
    assert keys_per_token(model) == expected


def test_half_precision_models_are_left_alone(model_root):
    model = _load(model_root, "tiny-llama", dtype=torch.bfloat16)
    layers = _linear_layers(model)
    assert pack_linear_layers(model) == 0
    assert _linear_layers(model) == layers


def test_a_probe_that_disagrees_leaves_the_model_as_loaded(model_root, monkeypatch):
    """A torch build whose oneDNN operators give other numbers must not serve wrong tokens."""
    monkeypatch.setattr(
        PackedLinear, "forward", lambda self, x: torch.zeros(*x.shape[:-1], self.out_features)
    )
    model = _load(model_root, "tiny-gpt2")
    layers = _linear_layers(model)
    assert pack_linear_layers(model) == 0
    assert _linear_layers(model) == layers


def test_a_build_without_the_operators_is_not_packed(model_root, monkeypatch):
    monkeypatch.setattr(packing.torch.backends.mkldnn, "is_available", lambda: False)
    model = _load(model_root, "tiny-gpt2")
    assert pack_linear_layers(model) == 0
    assert len(_linear_layers(model)) > 0


@pytest.mark.parametrize("packed", [True, False])
def test_the_loader_packs_unless_told_not_to(model_root, packed):
    """LLMVIZ_PACKED_WEIGHTS (on by default) decides; float32 on this machine's CPU."""
    settings = Settings.from_env({"LLMVIZ_PACKED_WEIGHTS": "1" if packed else "0"})
    assert Settings().packed_weights is True
    spec = ModelSpec("tiny-llama", str(model_root / "tiny-llama"), local=True)
    loaded = load(spec, settings)
    try:
        layers = len(_linear_layers(_load(model_root, "tiny-llama")))
        assert loaded.packed_layers == (layers if packed else 0)
        assert loaded.describe()["packed_layers"] == loaded.packed_layers
        assert loaded.placement() == {"device": "cpu", "dtype": "float32", "quantization": "none"}
    finally:
        loaded.worker.close(cancel=True)
        loaded.worker.join(30)


@pytest.mark.parametrize(
    ("model_id", "fused", "packed", "expected"),
    [
        ("tiny-gpt2", "1", "1", True),
        ("tiny-gpt2", "1", "0", True),  # Conv1D weights, transposed into a copy
        ("tiny-gpt2", "0", "1", False),
        ("tiny-llama", "1", "1", False),  # GPT-2's architecture only
    ],
)
def test_the_loader_gives_gpt2_a_fused_step_unless_told_not_to(
    model_root, model_id, fused, packed, expected
):
    """LLMVIZ_FUSED_STEP (on by default): packed layers keep a plain copy only for it."""
    require_compiler()
    assert Settings().fused_step is True
    settings = Settings.from_env({"LLMVIZ_FUSED_STEP": fused, "LLMVIZ_PACKED_WEIGHTS": packed})
    spec = ModelSpec(model_id, str(model_root / model_id), local=True)
    loaded = load(spec, settings)
    try:
        assert loaded.describe()["fused_step"] is expected
        layers = [m for m in loaded.worker._model.modules() if isinstance(m, PackedLinear)]
        assert len(layers) == loaded.packed_layers
        kept = [m for m in layers if m.plain is not None]
        assert len(kept) == (loaded.packed_layers if expected else 0)
    finally:
        loaded.worker.close(cancel=True)
        loaded.worker.join(30)


def _loaded_memory(model_root, env):
    spec = ModelSpec("tiny-gpt2", str(model_root / "tiny-gpt2"), local=True)
    loaded = load(spec, Settings.from_env(env))
    try:
        layers = [m for m in loaded.worker._model.modules() if isinstance(m, PackedLinear)]
        return loaded.describe(), sum(m.plain is not None for m in layers)
    finally:
        loaded.worker.close(cancel=True)
        loaded.worker.join(30)


def test_without_a_fused_step_no_plain_copy_is_kept(model_root, monkeypatch):
    """No compiler: the load goes on without the fused step, and the plain copies packing
    kept for it are dropped; the memory is what LLMVIZ_FUSED_STEP=0 takes."""
    from app.engine.kernels import build

    monkeypatch.setattr(build, "_built", {})  # this test's failure is not remembered after it
    monkeypatch.setenv("CC", "/nonexistent/cc")
    described, kept = _loaded_memory(model_root, {})
    assert described["fused_step"] is False and kept == 0
    off, _ = _loaded_memory(model_root, {"LLMVIZ_FUSED_STEP": "0"})
    assert described["memory_bytes"] == off["memory_bytes"]


def test_the_fused_step_s_own_copies_count_in_memory(model_root):
    """Unpacked (Conv1D) weights are transposed into copies for the fused step: counted."""
    require_compiler()
    fused, _ = _loaded_memory(model_root, {"LLMVIZ_PACKED_WEIGHTS": "0"})
    plain, _ = _loaded_memory(model_root, {"LLMVIZ_PACKED_WEIGHTS": "0", "LLMVIZ_FUSED_STEP": "0"})
    model = _load(model_root, "tiny-gpt2")
    blocks = sum(
        layer.weight.numel() * 4
        for block in model.transformer.h
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
    )
    assert fused["memory_bytes"] - plain["memory_bytes"] == blocks
