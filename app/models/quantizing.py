"""Linear layers with int8 or float16 weights on a CPU: decoding reads a quarter or half the bytes.

Decoding one stream on a CPU is bound by memory bandwidth: each step reads every weight
once. `LLMVIZ_QUANTIZE=int8` or `float16` stores the linear layers' weights (the LM
head included) smaller and runs them through FBGEMM, PyTorch's own x86 kernels for
dynamic quantization (`torch.ops.quantized.linear_dynamic` and `linear_dynamic_fp16`,
what `torch.ao.quantization.quantize_dynamic` installs). Embeddings, norms and attention
stay float32.

- `int8`: each output channel's weights scaled symmetrically to [-127, 127] (per-channel
  scales, as LLM.int8() and GPTQ keep them). FBGEMM multiplies in integers, so it also
  quantizes each pass's activations to 8 bits, one scale for the whole pass: a row's
  numbers can change with the rows decoded beside it. Not weight-only: this torch has no
  fast weight-only int8 kernel for float32 activations on x86 (measured on GPT-2 small's
  layers at one row: ATen's `_weight_int8pack_mm` 0.44x float32's speed, torchao 0.18's
  `Int8WeightOnlyConfig` 0.6x; FBGEMM's 4.0x).
- `float16`: weights rounded to float16, activations and sums stay float32 (weight-only):
  batch-invariant, errors near 1e-4 relative; 2.6x float32's speed at one row, 1.2x at 16.

docs/performance.md reports how far logprobs, the logit lens and attention move.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from app.models.packing import out_in_weight, plain_linear

KINDS = ("none", "int8", "float16")


class QuantizedLinear(nn.Module):
    """`y = x @ W.T + b` with W held as int8 (per-channel scales) or float16 in FBGEMM's
    packed form. x: [..., in_features] float32 -> y: [..., out_features] float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> None:
        """`weight`: [out_features, in_features] float32, as `nn.Linear` holds it."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kind = kind
        # Weights held outside the module's parameters: what counts them reads this
        # (app/engine/pace.py sizes a token's work by the model's weights).
        self.packed_weights = weight.numel() + (0 if bias is None else bias.numel())
        weight = weight.detach().float().contiguous()
        bias = None if bias is None else bias.detach().float()
        if kind == "int8":
            # The largest magnitude of each output channel maps to 127 (symmetric, so the
            # zero point is 0); an all-zero channel keeps a scale that divides safely.
            scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():
                # torch 2.13 marks quantized tensors deprecated (pytorch#184982) but has no
                # other way into FBGEMM's int8 kernels; requirements pin the tested torch.
                warnings.simplefilter("ignore", UserWarning)
                q = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, bias)
            self.weight_bytes = weight.numel() + scales.numel() * 8  # float64 scales
        elif kind == "float16":
            self._packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
            self.weight_bytes = weight.numel() * 2
        else:
            raise ValueError(f"no quantized kind {kind!r}: one of {', '.join(KINDS[1:])}")
        self.weight_bytes += 0 if bias is None else bias.numel() * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for `x` (any leading dimensions)."""
        flat = x.reshape(-1, self.in_features).float()
        if self.kind == "int8":
            # reduce_range=False: the full 8 bits for activations (FBGEMM on AVX-512 VNNI).
            y = torch.ops.quantized.linear_dynamic(flat, self._packed, False)
        else:
            y = torch.ops.quantized.linear_dynamic_fp16(flat, self._packed)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"


def can_quantize(model: nn.Module) -> str | None:
    """None when `model` can take quantized linear layers; else why not (a sentence)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "this torch build has no FBGEMM (x86 only)"
    parameter = next(model.parameters(), None)
    if parameter is None:
        return "the model has no weights"
    if parameter.device.type != "cpu":
        return f"it runs on a CPU only, and the model is on {parameter.device.type}"
    if parameter.dtype != torch.float32:
        return f"it needs a float32 model, and this one is {str(parameter.dtype).split('.')[-1]}"
    return None


def quantize_linear_layers(model: nn.Module, kind: str) -> int:
    """Replace the model's `nn.Linear` and GPT-2-style `Conv1D` layers by QuantizedLinears.

    Returns how many were replaced. A layer tied to another parameter (an LM head sharing
    the embedding) gets a quantized copy; the embedding keeps the original. Subclasses of
    these layers are left alone, as packing leaves them (app/models/packing.py). Raises
    ValueError when `can_quantize` says no, or for an unknown kind.
    """
    reason = can_quantize(model)
    if reason is not None:
        raise ValueError(f"LLMVIZ_QUANTIZE={kind}: {reason}")
    torch.backends.quantized.engine = "fbgemm"
    layers = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if plain_linear(child)
    ]
    for parent, name, child in layers:
        setattr(parent, name, QuantizedLinear(out_in_weight(child), child.bias, kind))
    return len(layers)


def _memory(tensor: torch.Tensor) -> tuple[object, int]:
    """A key for the memory `tensor` reads (shared memory, one key) and its bytes."""
    if tensor.layout == torch.strided and not tensor.is_mkldnn:
        try:
            storage = tensor.untyped_storage()
            return ("storage", storage.data_ptr()), storage.nbytes()
        except NotImplementedError:  # an opaque tensor (oneDNN's packed weights)
            pass
    return ("tensor", id(tensor)), tensor.numel() * tensor.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors in memory, quantized layers' packed weights included
    (not the weights a device map left on disk: those read `meta`)."""
    tensors: Any = (*model.parameters(), *model.buffers())
    # A buffer may share its memory with a parameter (a packed head's plain weight is the
    # tied embedding's): count each piece of memory once.
    stored = dict(_memory(t) for t in tensors if t.device.type != "meta")
    held = sum(stored.values())
    return held + sum(m.weight_bytes for m in model.modules() if isinstance(m, QuantizedLinear))
