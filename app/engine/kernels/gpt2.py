"""The fused decoding step for one row of a GPT-2 model (gpt2_step.c), driven from Python.

Made and checked by the lean step (app/engine/lean.py) as a model loads; a DecodeBatch
runs it for plain decoding steps of exactly one unpadded row (a single stream), which is
where a step's time is the weights' reading and the gaps between operators. Two rows or
more keep oneDNN's packed products, which the plain dot products here do not match once a
weight row serves several rows.

Weights: the C step reads each linear layer as [out_features, in_features], contiguous.
An `nn.Linear` holds that; GPT-2's `Conv1D` holds the transpose, and a packed layer
holds oneDNN's layout, so those are read from the plain copy the loader keeps
(`PackedLinear.plain`, app/models/packing.py) or transposed into a copy here. A head
tied to the token embedding reads the embedding itself. The cost is one plain copy of
the blocks' linear weights beside the packed one (GPT-2 small: 340 MB).
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import torch
from torch import nn

from app.engine.kernels.build import KernelUnavailable, library

log = logging.getLogger(__name__)

_F = ctypes.POINTER(ctypes.c_float)
_ACTIVATIONS = {"gelu_new": 0, "gelu_pytorch_tanh": 0, "gelu": 1, "relu": 2}
_BLOCK_FIELDS = [
    "ln1_weight", "ln1_bias", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias",
    "ln2_weight", "ln2_bias", "fc_weight", "fc_bias", "out_weight", "out_bias",
]  # fmt: skip


class _Block(ctypes.Structure):
    _fields_ = [(name, _F) for name in _BLOCK_FIELDS] + [("scale", ctypes.c_float)]


class _Model(ctypes.Structure):
    _fields_ = [
        *[(name, ctypes.c_int64) for name in ("d_model", "heads", "head_dim", "d_mlp")],
        *[(name, ctypes.c_int64) for name in ("vocab", "positions", "layers")],
        ("eps", ctypes.c_float),
        ("activation", ctypes.c_int32),
        *[(name, _F) for name in ("token_embedding", "position_embedding")],
        *[(name, _F) for name in ("lnf_weight", "lnf_bias", "head_weight", "head_bias")],
        ("blocks", ctypes.POINTER(_Block)),
    ]


class _CacheLayer(ctypes.Structure):
    # Addresses as plain integers: set every step, and a c_void_p takes an int as it is.
    _fields_ = [("keys", ctypes.c_void_p), ("values", ctypes.c_void_p)]
    _fields_ += [("head_stride", ctypes.c_int64), ("column_stride", ctypes.c_int64)]


class FusedStep:
    """One decoding step of one row of a GPT-2 model, in C.

    Call it with the row's newest token, its position and the row's KV cache (a
    growing cache of one row, app/engine/kvcache.py); it appends the step's keys and
    values to the cache and returns the next-token logits [1, vocab] float32.
    """

    def __init__(self, model: Any, lib: ctypes.CDLL) -> None:
        """Raises TypeError or ValueError for weights the C step cannot read as they are."""
        body, config = model.transformer, model.config
        d_model, d_mlp = config.n_embd, config.n_inner or 4 * config.n_embd
        self._keep: list[torch.Tensor] = []  # every tensor whose memory the C side reads
        self._blocks = (_Block * len(body.h))()
        shapes = ((3 * d_model, d_model), (d_model, d_model), (d_mlp, d_model), (d_model, d_mlp))
        for block, fused in zip(body.h, self._blocks, strict=True):
            attention, mlp = block.attn, block.mlp
            layers = (attention.c_attn, attention.c_proj, mlp.c_fc, mlp.c_proj)
            tensors = [block.ln_1.weight, block.ln_1.bias]
            for index, (layer, shape) in enumerate(zip(layers, shapes, strict=True)):
                weight = _out_in(layer)
                if tuple(weight.shape) != shape:
                    raise ValueError(f"a {tuple(weight.shape)} weight where {shape} was expected")
                tensors += [weight, _f32(layer.bias)]
                if index == 1:  # the attention's projection, then the MLP's norm
                    tensors += [block.ln_2.weight, block.ln_2.bias]
            for name, tensor in zip(_BLOCK_FIELDS, tensors, strict=True):
                setattr(fused, name, self._pointer(tensor))
            fused.scale = float(attention.scaling)
        head, vocab = model.lm_head, body.wte.weight.shape[0]
        head_weight = _out_in(head)
        if tuple(head_weight.shape) != (vocab, d_model):
            raise ValueError("the LM head's shape is not the embedding's")
        self._model = _Model(
            d_model=d_model,
            heads=config.n_head,
            head_dim=d_model // config.n_head,
            d_mlp=d_mlp,
            vocab=vocab,
            positions=body.wpe.weight.shape[0],
            layers=len(body.h),
            eps=body.ln_f.eps,
            activation=_ACTIVATIONS[config.activation_function],
            token_embedding=self._pointer(body.wte.weight),
            position_embedding=self._pointer(body.wpe.weight),
            lnf_weight=self._pointer(body.ln_f.weight),
            lnf_bias=self._pointer(body.ln_f.bias),
            head_weight=self._pointer(head_weight),
            head_bias=self._pointer(_f32(getattr(head, "bias", None))),
            blocks=self._blocks,
        )
        self._vocab = int(vocab)
        held = _addresses((*model.parameters(), *model.buffers()))
        copies = {t.untyped_storage().data_ptr(): t.nbytes for t in self._keep}
        # Bytes of the weights made for this step (transposed copies), not the model's own.
        self.copied_bytes = sum(n for address, n in copies.items() if address not in held)
        self._layers = (_CacheLayer * len(body.h))()
        self._scratch = torch.empty(lib.gpt2_scratch_floats(ctypes.byref(self._model)))
        self._scratch_address = self._scratch.data_ptr()
        self._step = lib.gpt2_step

    def _pointer(self, tensor: torch.Tensor | None) -> Any:
        if tensor is None:
            return None
        if tensor.dtype != torch.float32 or not tensor.is_contiguous() or tensor.is_cuda:
            raise ValueError("the fused step reads contiguous float32 tensors on the CPU")
        self._keep.append(tensor)
        return ctypes.cast(tensor.data_ptr(), _F)

    def __call__(self, token: int, position: int, cache: Any) -> torch.Tensor:
        """Logits [1, vocab] for `token` at `position`; the cache (of one row, growing
        layers) grows by one column. Called where no gradient is recorded (the engine's
        steps run under inference mode).

        Raises ValueError for a token or position the model has no embedding for (nothing
        is written then).
        """
        column = -1
        for slot, layer in zip(self._layers, cache.layers, strict=True):
            keys, values, at = layer.room()
            if column not in (-1, at):
                raise RuntimeError("the cache's layers hold different lengths")  # a caller's bug
            column = at
            slot.keys, slot.values = keys.data_ptr(), values.data_ptr()  # row 0's start
            slot.head_stride, slot.column_stride = keys.stride(1), keys.stride(2)
        logits = torch.empty((1, self._vocab))
        failed = self._step(
            ctypes.byref(self._model),
            self._layers,
            token,
            position,
            column,
            logits.data_ptr(),
            self._scratch_address,
            torch.get_num_threads(),
        )
        if failed:
            raise ValueError(f"token {token} at position {position} is outside the model")
        for layer in cache.layers:
            layer.advance()
        return logits


def computes(model: object) -> bool:
    """Whether the C step computes `model`'s activation (GPT-2's architecture is the lean
    step's check)."""
    config: Any = getattr(model, "config", None)
    return getattr(config, "activation_function", None) in _ACTIVATIONS


def make(model: object) -> FusedStep | None:
    """A fused step for `model` (already checked by the lean step as GPT-2's architecture),
    or None where it cannot run: weights not float32 on the CPU, layers it does not know
    (quantized), an activation it does not compute, or no compiler."""
    if not computes(model):
        return None
    try:
        lib = _bound(library())
    except KernelUnavailable as exc:
        log.warning("no fused decoding step: %s", exc)
        return None
    try:
        return FusedStep(model, lib)
    except (TypeError, ValueError, AttributeError) as exc:
        log.info("no fused decoding step for this model (%s)", exc)
        return None


def _addresses(tensors: Any) -> set[int]:
    """Where the tensors' memory starts (opaque tensors, oneDNN's packed weights, have none
    to share: skipped)."""
    addresses = set()
    for tensor in tensors:
        try:
            addresses.add(tensor.untyped_storage().data_ptr())
        except (NotImplementedError, RuntimeError):
            continue
    return addresses


def _bound(lib: ctypes.CDLL) -> ctypes.CDLL:
    """`lib` with its functions' C signatures declared (ctypes assumes int otherwise)."""
    lib.gpt2_scratch_floats.argtypes = [ctypes.POINTER(_Model)]
    lib.gpt2_scratch_floats.restype = ctypes.c_int64
    lib.gpt2_step.argtypes = [
        ctypes.POINTER(_Model),
        ctypes.POINTER(_CacheLayer),
        *[ctypes.c_int64] * 3,
        ctypes.c_void_p,  # the logits
        ctypes.c_void_p,  # the work space
        ctypes.c_int,
    ]
    lib.gpt2_step.restype = ctypes.c_int
    return lib


def _out_in(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a contiguous [out_features, in_features] float32 tensor."""
    plain = getattr(layer, "plain", None)  # a packed layer's plain copy, when kept
    if isinstance(plain, torch.Tensor):
        return plain
    if type(layer).__name__ == "Conv1D":
        return _f32(layer.weight).t().contiguous()
    if type(layer) is nn.Linear:
        return _f32(layer.weight).contiguous()
    raise TypeError(f"{type(layer).__name__} holds no plain float32 weight")


def _f32(tensor: Any) -> Any:
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        raise TypeError("the fused step reads float32 weights")
    return tensor.detach()
