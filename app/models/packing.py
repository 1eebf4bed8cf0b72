"""Float32 linear layers with their weights prepacked for oneDNN, for decoding on a CPU.

On a CPU, torch's float32 `linear` goes to MKL's sgemm. For decoding's skinny
products (a few rows of activations against a large weight) MKL runs far below
what oneDNN gets from the same machine once the weight has been reordered, a
single time, into oneDNN's blocked layout. Measured on this project's 2-core AMD
EPYC (Zen 4) VM, GPT-2 small's shape, float32: its LM head for 4 rows takes 23 ms
through MKL and 5.8 ms packed; a decoding step of 8 rows, 83 ms and 31 ms. Long
prompts gain little (a 900-token prefill: 1.12 s and 1.09 s): large products are
near the machine's peak either way.

This is what PyTorch's inductor does on a CPU when it freezes a model, with the same
two operators (`torch.ops.mkldnn._reorder_linear_weight`, then
`torch.ops.mkldnn._linear_pointwise`), and what Intel's IPEX `optimize` does. The
arithmetic is the same; only the order of the float32 sums differs, so outputs agree
with the unpacked model to about 1e-6 (not bit for bit).
"""

from __future__ import annotations

import logging
from typing import TypeGuard

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

log = logging.getLogger(__name__)

# The row count oneDNN picks its blocking for. It is a hint: any row count works, and
# measured from 8 to 512 it changes decoding steps and prefills by under 5% (1 is worse).
_ROWS_HINT = 32


class PackedLinear(nn.Module):
    """`y = x @ W.T + b`, W held in oneDNN's layout. x: [..., in_features] float32 →
    y: [..., out_features]. Inference only: the operator has no gradient."""

    plain: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, keep_plain=False) -> None:
        """`weight`: [out_features, in_features], as `nn.Linear` holds it. `keep_plain`: keep
        it too, contiguous, as the buffer `plain`, for code that reads a plain layout (the
        fused decoding step, app/engine/kernels); an `nn.Linear`'s weight is kept as it is,
        shared with whatever else holds it (a tied embedding)."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        plain = weight.detach().contiguous()
        packed = torch.ops.mkldnn._reorder_linear_weight(plain, _ROWS_HINT)
        self.weight = nn.Parameter(packed, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.register_buffer("plain", plain if keep_plain else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for `x`."""
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def can_pack(model: nn.Module) -> bool:
    """Whether `model`'s linear layers would gain from packing: float32 on a CPU whose torch
    has oneDNN with the two operators."""
    try:
        parameter = next(model.parameters())
    except StopIteration:
        return False
    return (
        parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack_linear_layers(model: nn.Module, keep_plain: bool = False) -> int:
    """Replace the model's `nn.Linear` and GPT-2-style `Conv1D` layers by `PackedLinear`s
    (keeping each plain weight too where `keep_plain`, see `PackedLinear`).

    Returns how many were replaced (0 when `can_pack` says no, or when a packed layer
    does not reproduce its original on a probe: the model is then left as it was). A
    layer tied to another parameter (an LM head sharing the embedding) gets a packed
    copy; the embedding keeps the original. Subclasses of these layers (quantized or
    adapter layers) are left alone.
    """
    if not can_pack(model):
        return 0
    layers = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if plain_linear(child)
    ]
    if not layers or not _reproduces(layers[0][2]):
        return 0
    for parent, name, child in layers:
        setattr(parent, name, _packed(child, keep_plain))
    return len(layers)


def drop_plain_weights(model: nn.Module) -> int:
    """Forget the plain copies packed layers keep (see `PackedLinear`); how many there were."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear) and m.plain is not None]
    for layer in layers:
        layer.plain = None
    return len(layers)


def plain_linear(module: nn.Module) -> TypeGuard[nn.Linear | Conv1D]:
    """An `nn.Linear` or a `Conv1D` itself: a subclass (quantized, adapter) may hold its
    weight differently or add to the product, so it is not one of these."""
    return type(module) in (nn.Linear, Conv1D)


def out_in_weight(layer: nn.Linear | Conv1D) -> torch.Tensor:
    """The layer's weight as [out_features, in_features] (Conv1D holds it transposed)."""
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def _packed(layer: nn.Linear | Conv1D, keep_plain: bool = False) -> PackedLinear:
    return PackedLinear(out_in_weight(layer), layer.bias, keep_plain)


@torch.inference_mode()
def _reproduces(layer: nn.Linear | Conv1D) -> bool:
    """Whether the packed layer gives the original's output on a probe (a torch build whose
    operators misbehave must not serve wrong tokens)."""
    try:
        packed = _packed(layer)
        probe = torch.randn(3, packed.in_features, generator=torch.Generator().manual_seed(0))
        expected, got = layer(probe), packed(probe)
    except RuntimeError as exc:
        log.warning("oneDNN packing is unavailable (%s): linear layers stay as loaded", exc)
        return False
    if torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        return True
    log.warning("oneDNN packing changed a layer's output: linear layers stay as loaded")
    return False
