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


def decode(encoded: dict[str, Any]) -> np.ndarray:
    """The inverse of `encode` (used by tests and Python clients)."""
    raw = base64.b64decode(encoded["data"])
    return np.frombuffer(raw, dtype=_DTYPES[encoded["dtype"]]).reshape(encoded["shape"])


def encoded_size(elements: int, dtype: str) -> int:
    """Bytes of JSON that `encode` produces for this many elements (base64 included)."""
    return 4 * ((elements * ITEM_BYTES[dtype] + 2) // 3) + 48
