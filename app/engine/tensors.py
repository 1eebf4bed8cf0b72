"""The compact tensor encoding of visualization data: `{shape, dtype, data}` with base64 data.

Data is little-endian, C order: float16 for weights and probabilities, int32 for
indices and token ids. A browser decodes it with `new Float16Array(bytes.buffer)`
(or a float16 reader) and `new Int32Array(bytes.buffer)`.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

_DTYPES = {"float16": "<f2", "float32": "<f4", "int32": "<i4"}
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "int32": torch.int32}
ITEM_BYTES = {"float16": 2, "float32": 4, "int32": 4}


def encode(tensor: torch.Tensor | np.ndarray, dtype: str) -> dict[str, Any]:
    """Encode a tensor as `{shape, dtype, data}`."""
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else tensor
    array = np.ascontiguousarray(array.astype(_DTYPES[dtype], copy=False))
    return {
        "shape": list(array.shape),
        "dtype": dtype,
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


class TextPieces(tuple[str, ...]):
    """One JSON string kept as consecutive pieces (the base64 of a large tensor): joined,
    copied or encoded whole, hundreds of megabytes hold the GIL for a second at a time;
    app/web/large.py writes the pieces one after another, as the one string they make."""


PIECE_BYTES = 3 << 18  # raw bytes per base64 piece: 1 MiB of text, a few ms of GIL


def encode_pieces(tensor: torch.Tensor, dtype: str) -> dict[str, Any]:
    """`encode`, with `data` as `TextPieces` of at most 1 MiB each: no step holds the GIL
    for more than a few milliseconds, whatever the tensor's size (torch's cast and copy
    release it; base64 runs a piece at a time)."""
    array = tensor.detach().to("cpu", _TORCH_DTYPES[dtype]).contiguous().numpy()
    # No copy: pieces are encoded straight from the tensor's bytes, in its byte order.
    raw = array.astype(_DTYPES[dtype], copy=False).reshape(-1).view(np.uint8).data
    pieces = [
        base64.b64encode(raw[start : start + PIECE_BYTES]).decode("ascii")
        for start in range(0, len(raw), PIECE_BYTES)
    ]
    return {"shape": list(array.shape), "dtype": dtype, "data": TextPieces(pieces)}


def decode(encoded: dict[str, Any]) -> np.ndarray:
    """The inverse of `encode` (used by tests and Python clients)."""
    data = encoded["data"]
    raw = base64.b64decode("".join(data) if isinstance(data, TextPieces) else data)
    return np.frombuffer(raw, dtype=_DTYPES[encoded["dtype"]]).reshape(encoded["shape"])


def encoded_size(elements: int, dtype: str) -> int:
    """Bytes of JSON that `encode` produces for this many elements (base64 included)."""
    return 4 * ((elements * ITEM_BYTES[dtype] + 2) // 3) + 48
