"""LLMVIZ_DEVICE_MAP and LLMVIZ_MAX_MEMORY read into what accelerate's device map takes.

A model larger than one device's memory is split by accelerate: whole blocks of it go to
the first GPU, the next, then the CPU, then disk (see app/models/dispatch.py). These two
settings say how, in accelerate's own terms (`from_pretrained(device_map=..., max_memory=...)`),
so that a map written for accelerate works here unchanged:

- LLMVIZ_DEVICE_MAP: `auto`, `balanced`, `balanced_low_0` or `sequential` (accelerate's
  strategies), or a JSON object of module name to device placing every parameter once:
  `{"transformer.wte": 0, "lm_head": 0, "transformer.wpe": 0, "transformer.drop": 0,
  "transformer.h": "cpu", "transformer.ln_f": "disk"}` (`""` is the whole model). How it
  fits a model is checked at load (app/models/dispatch.py's `check_map`).
- LLMVIZ_MAX_MEMORY: a JSON object of device to its budget, `{"0": "70GiB", "cpu":
  "150MB"}`: GPUs by index, and "cpu", "mps", "disk"; a budget is a number of bytes or a
  size with a unit (`KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`).

Both are checked when settings are read, so a typo stops startup with the setting's name
instead of failing at a model's first load.
"""

from __future__ import annotations

import json
import re
from typing import Any

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# A device as accelerate names one: a GPU index, "cpu", "disk", "mps", or "cuda:N" / "xpu:N".
_DEVICE = re.compile(r"[0-9]+|cpu|disk|mps|(cuda|xpu|npu|mlu|musa|sdaa|hpu):[0-9]+")
# A memory budget as accelerate's convert_file_size_to_int reads one.
# A capital B: accelerate reads "150Mb" as megabits.
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*[KMGkmg]i?B")
_BUDGETED = re.compile(r"[0-9]+|cpu|mps|disk")


def parse_device_map(raw: str) -> str | dict[str, int | str] | None:
    """The device map LLMVIZ_DEVICE_MAP names: None when unset, a strategy's name, or
    module name -> device (a GPU index as an int, else the device's name).

    Raises:
        ValueError: neither a strategy nor a JSON object of module names to devices.
    """
    raw = raw.strip()
    if not raw:
        return None
    if raw in STRATEGIES:
        return raw
    parsed = _json_object("LLMVIZ_DEVICE_MAP", raw, f"one of {', '.join(STRATEGIES)}, or ")
    return {module: _device("LLMVIZ_DEVICE_MAP", value) for module, value in parsed.items()}


def parse_max_memory(raw: str) -> dict[int | str, int | str] | None:
    """The budgets LLMVIZ_MAX_MEMORY gives: None when unset, else device -> bytes or size.

    Raises:
        ValueError: not a JSON object of devices to positive sizes.
    """
    raw = raw.strip()
    if not raw:
        return None
    parsed = _json_object("LLMVIZ_MAX_MEMORY", raw, "")
    budgets: dict[int | str, int | str] = {}
    for key, value in parsed.items():
        # accelerate budgets GPUs by index, and the CPU, MPS and disk by name only.
        if not _BUDGETED.fullmatch(key):
            raise ValueError(
                f"LLMVIZ_MAX_MEMORY: {key!r} is not a device to budget; use a GPU index "
                '("0", "1", ...), "cpu", "mps" or "disk"'
            )
        size = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
        valid = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
            size is not None and float(size.group(1)) > 0
        )
        if not valid:
            raise ValueError(
                f"LLMVIZ_MAX_MEMORY: the budget of {key!r} must be a positive number of bytes "
                f'or a size such as "150MB" or "70GiB" (units KB, MB, GB, KiB, MiB, GiB), '
                f"not {value!r}"
            )
        budgets[int(key) if key.isdigit() else key] = (
            value.strip() if isinstance(value, str) else value
        )
    return budgets


def _json_object(name: str, raw: str, alternatives: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{name} is not valid JSON ({exc.msg}); give {alternatives}a JSON object"
        ) from None
    if not isinstance(parsed, dict) or not parsed:
        raise ValueError(f"{name} must be {alternatives}a non-empty JSON object")
    return parsed


def _device(name: str, value: Any) -> int | str:
    """A device as accelerate takes it: GPU indices as ints ("0" and 0 alike)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _DEVICE.fullmatch(value.strip()):
        value = value.strip()
        return int(value) if value.isdigit() else value
    raise ValueError(
        f"{name}: {value!r} is not a device; use a GPU index (0, 1, ...), "
        '"cpu", "disk", "mps" or "cuda:N"'
    )
