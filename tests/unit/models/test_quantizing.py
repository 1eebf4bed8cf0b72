"""LLMVIZ_QUANTIZE: int8 and float16 linear weights, how close they stay, where refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from app import create_app, models
from app.config import Settings
from app.engine.pace import keys_per_token
from app.models.quantizing import QuantizedLinear, quantize_linear_layers, weight_bytes


def _load(model_root, model_id, **options):
    return AutoModelForCausalLM.from_pretrained(model_root / model_id, **options).eval()


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize(("kind", "bound"), [("int8", 3e-2), ("float16", 1e-3)])
def test_a_quantized_layer_stays_close_to_its_original(kind, bound):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(5, 7, 64)
    layer = QuantizedLinear(linear.weight, linear.bias, kind)
    got = layer(x)
    assert got.shape == (5, 7, 48) and got.dtype == torch.float32
    error = _relative(got, linear(x).detach())
    assert 0 < error < bound  # approximate, as documented, and not far off


def test_float16_weights_leave_a_row_alone_of_its_batch():
    # Weight-only: a row's output does not depend on the rows beside it.
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = QuantizedLinear(linear.weight, linear.bias, "float16")
    x = torch.randn(4, 64)
    x[3] *= 100  # an outlier row
    assert torch.equal(layer(x)[:1], layer(x[:1]))


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("kind", ["int8", "float16"])
def test_every_linear_layer_is_replaced_and_the_logits_stay_close(model_root, model_id, kind):
    """GPT-2's Conv1D (weights stored transposed) and Llama's nn.Linear, the LM head too;
    a tied embedding keeps its float32 weights."""
    reference = _load(model_root, model_id)
    model = _load(model_root, model_id)
    embedding = model.get_input_embeddings().weight.detach().clone()
    linear = [m for m in model.modules() if type(m) in (nn.Linear, Conv1D)]
    assert quantize_linear_layers(model, kind) == len(linear) > 0
    assert not [m for m in model.modules() if type(m) in (nn.Linear, Conv1D)]
    assert isinstance(model.get_output_embeddings(), QuantizedLinear)
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    ids = torch.randint(
        0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        expected, got = reference(ids).logits, model(ids).logits
    assert _relative(got, expected) < (5e-2 if kind == "int8" else 1e-3)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8


def test_quantized_weights_are_counted_as_bytes_and_as_work(model_root):
    reference = _load(model_root, "slow-gpt2")
    model = _load(model_root, "slow-gpt2")
    quantize_linear_layers(model, "int8")
    # Pacing sizes a token's work by the weights: the same model, the same work.
    assert keys_per_token(model) == pytest.approx(keys_per_token(reference))
    assert weight_bytes(model) < weight_bytes(reference)


def test_a_model_that_is_not_float32_is_refused_with_the_reason(model_root):
    model = _load(model_root, "tiny-gpt2", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="LLMVIZ_QUANTIZE=int8: it needs a float32 model"):
        quantize_linear_layers(model, "int8")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMVIZ_QUANTIZE": "int4"}, "LLMVIZ_QUANTIZE must be one of none, int8, float16"),
        ({"LLMVIZ_QUANTIZE": "int8", "LLMVIZ_DEVICE": "cuda"}, "needs float32 weights on a CPU"),
        ({"LLMVIZ_QUANTIZE": "int8", "LLMVIZ_DTYPE": "bfloat16"}, "needs float32 weights on a CPU"),
    ],
)
def test_settings_that_cannot_quantize_stop_startup(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def _listed(client, model_id: str) -> list[dict]:
    """The copies of `model_id` that GET /models lists in use (not retiring)."""
    loaded = client.get("/models").get_json()["loaded"]
    return [m for m in loaded if m["model_id"] == model_id and not m["retiring"]]


@pytest.mark.parametrize("kind", ["int8", "float16"])
def test_a_quantized_model_serves_and_says_so(model_root, fresh_cache, kind):
    client = create_app({"model_root": model_root, "quantize": kind}).test_client()
    body = {"model_id": "tiny-gpt2", "prompt": "hello there", "max_new_tokens": 4}
    answer = client.post("/generate", json={**body, "details": True, "top_logprobs": 2})
    assert answer.status_code == 200, answer.get_json()
    assert len(answer.get_json()["details"]["tokens"]) == 4
    inspected = client.post("/inspect", json={**body, "include": ["logit_lens", "attention"]})
    assert inspected.status_code == 200, inspected.get_json()
    assert {"logit_lens", "attention"} <= set(inspected.get_json())
    (listed,) = _listed(client, "tiny-gpt2")
    assert listed["quantization"] == kind and listed["packed_layers"] == 0
    config = client.get("/models/tiny-gpt2/config").get_json()
    assert config["quantization"] == kind
    models.cache.clear()
    exact = create_app({"model_root": model_root}).test_client()
    exact.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": "x"})
    (plain,) = _listed(exact, "tiny-gpt2")
    assert plain["quantization"] == "none"
    assert listed["memory_bytes"] < plain["memory_bytes"]


def test_a_load_that_cannot_quantize_fails_with_the_reason(model_root):
    # LLMVIZ_DEVICE=auto may pick a GPU at load time, past the settings' own check.
    from app.errors import ModelLoadFailed
    from app.models.loading import _quantize
    from app.models.resolution import ModelSpec

    model = _load(model_root, "tiny-gpt2", dtype=torch.bfloat16)
    spec = ModelSpec("tiny-gpt2", str(model_root / "tiny-gpt2"), local=True)
    with pytest.raises(ModelLoadFailed, match="'tiny-gpt2' failed: LLMVIZ_QUANTIZE=float16: it"):
        _quantize(model, "float16", spec)
