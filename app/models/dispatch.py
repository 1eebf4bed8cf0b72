"""Models split over devices and disk by accelerate's device map (LLMVIZ_DEVICE_MAP).

transformers loads such a model with `from_pretrained(device_map=..., max_memory=...,
offload_folder=...)`: accelerate assigns whole modules (embeddings, each decoder block, the
LM head) to the first GPU until its budget is spent, then the next, then the CPU, then disk,
and hooks every module so that its inputs move to its device and, for modules on disk, its
weights are read in for each forward pass and dropped after (they read `device=meta` in
between). A safetensors checkpoint is read from where it lies; other formats are first
copied to LLMVIZ_OFFLOAD_DIR.

The engine runs such a model through its forward pass as it runs any model, so every
internal (attentions, hidden states, the logit lens) comes out as from the model loaded
whole. What reads weights directly is kept off it: oneDNN packing and quantization (they
would copy offloaded weights back into memory, or read `meta`), and lean decoding steps
(they call a block's parts without the block's own hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import torch
from accelerate.utils import find_tied_parameters
from torch import nn
from transformers import AutoModelForCausalLM

from app.config import Settings
from app.devicemap import parse_device_map, parse_max_memory

T = TypeVar("T")

# Where accelerate keeps weights that are not on a compute device.
_OFFLOAD = ("disk",)


def loading_options(settings: Settings, model_id: str) -> dict[str, Any]:
    """`from_pretrained` keywords for the device map the settings give ({} for none).

    Each model gets a folder of its own under LLMVIZ_OFFLOAD_DIR: accelerate names the
    files it writes there after the model's parameters, which two models share.
    """
    device_map = parse_device_map(settings.device_map)
    if device_map is None:
        return {}
    options: dict[str, Any] = {"device_map": device_map}
    max_memory = parse_max_memory(settings.max_memory)
    if max_memory is not None:
        options["max_memory"] = max_memory
    if settings.offload_dir.strip():
        folder = Path(settings.offload_dir.strip()) / quote(model_id, safe="")
        options["offload_folder"] = str(folder)
    return options


def load_split(load: Callable[..., T], options: dict[str, Any], config: Any) -> T:
    """`load(**options)` for a model of `config`, its device map checked first and what
    accelerate raises told in this server's settings: a device map is the operator's
    setting, so what goes wrong with it is a failed load (500), never the client's 400.

    Raises:
        RuntimeError: a JSON map that does not fit the model (`check_map`); an offload
            folder that cannot be made; weights that must be copied to disk (not a
            safetensors checkpoint) with LLMVIZ_OFFLOAD_DIR unset; anything else accelerate
            refuses (its message).
    """
    if isinstance(options.get("device_map"), dict):
        check_map(options["device_map"], config)
    folder = options.get("offload_folder")
    if folder is not None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(
                f"LLMVIZ_OFFLOAD_DIR: cannot make {folder}: {exc.strerror}"
            ) from None
    try:
        return load(**options)
    except ValueError as exc:
        if "offload_folder" in str(exc) and folder is None:
            raise RuntimeError(
                "LLMVIZ_DEVICE_MAP puts some of its weights on disk, and they must be copied "
                "there first (the checkpoint is not safetensors): set LLMVIZ_OFFLOAD_DIR to a "
                "folder with room for them"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"accelerate refused LLMVIZ_DEVICE_MAP or LLMVIZ_MAX_MEMORY: {first}"
        ) from None


def check_map(placed: dict[str, int | str], config: Any) -> None:
    """Refuse a JSON device map that does not fit the model, naming what is wrong: a
    module the model does not have, entries inside one another, parameters no entry
    places, or tied weights (an LM head sharing the embedding) on two devices, which
    accelerate would load into a model that fails at its first pass.

    Raises:
        RuntimeError: any of those (the model's other architectures: a map names one's
            modules, and every model the server loads gets it).
    """
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)  # shapes only, no memory
    modules = dict(skeleton.named_modules())
    problems = []
    unknown = sorted(m for m in placed if m not in modules)
    if unknown:
        problems.append(f"no module named {_few(unknown)} in this model")
    nested = sorted(
        f"{inner!r} inside {outer!r}"
        for outer in placed
        for inner in placed
        if inner != outer and (outer == "" or inner.startswith(outer + "."))
    )
    if nested:
        problems.append(
            f"entries inside one another ({_few(nested, quoted=False)}): give each module once"
        )
    known = {m: _device_name(d) for m, d in placed.items() if m in modules}
    names = [n for n, _ in skeleton.named_parameters(remove_duplicate=False)]
    unplaced = [n for n in names if _owner(n, known) not in known]
    if unplaced and not unknown:
        problems.append(f"{len(unplaced)} parameters are placed by no entry ({_few(unplaced)})")
    for group in find_tied_parameters(skeleton):
        devices = {known[owner] for n in group if (owner := _owner(n, known)) in known}
        if len(devices) > 1:
            problems.append(
                f"tied weights {_few(group)} must be on one device, not {sorted(devices)}"
            )
    if problems:
        raise RuntimeError(
            f"LLMVIZ_DEVICE_MAP does not fit {type(skeleton).__name__}: " + "; ".join(problems)
        )


def _few(items: list[str], shown: int = 3, quoted: bool = True) -> str:
    listed = ", ".join(repr(i) if quoted else i for i in items[:shown])
    return listed + (f" and {len(items) - shown} more" if len(items) > shown else "")


def device_map(model: nn.Module) -> dict[str, str] | None:
    """Module name -> device ("cpu", "disk", "cuda:0"), as accelerate placed the model, or
    None when the model sits whole on one compute device (loaded without a map, or a map
    that put everything on one device)."""
    placed = getattr(model, "hf_device_map", None)
    if not placed:
        return None
    names = {module: _device_name(device) for module, device in placed.items()}
    if len(set(names.values())) == 1 and next(iter(names.values())) not in _OFFLOAD:
        return None
    return names


def is_split(model: nn.Module) -> bool:
    """Whether the model is spread over several devices or has modules offloaded."""
    return device_map(model) is not None


def describe(model: nn.Module) -> dict[str, Any] | None:
    """Where each part of a split model lives, for GET /models: `map` (module -> device),
    `bytes` (device -> bytes of weights and buffers placed there; tied weights once) and
    `offloaded` (modules whose weights are read from disk for each pass, or kept on the CPU
    for a GPU); None for a model on one device."""
    placed = device_map(model)
    if placed is None:
        return None
    per_device: dict[str, int] = {}
    tensors = (*model.named_parameters(), *model.named_buffers())
    for name, tensor in tensors:
        device = placed.get(_owner(name, placed), "cpu")
        if device in _OFFLOAD and tensor.device.type != "meta":
            device = str(tensor.device)  # a buffer accelerate keeps in memory
        per_device[device] = per_device.get(device, 0) + tensor.numel() * tensor.element_size()
    computing = {d for d in placed.values() if d not in _OFFLOAD}
    offload = set(_OFFLOAD) | ({"cpu"} if computing - {"cpu"} else set())
    return {
        "map": placed,
        "bytes": per_device,
        "offloaded": [module for module, device in placed.items() if device in offload],
    }


def _owner(name: str, placed: dict[str, str]) -> str:
    """The device map's entry that holds the tensor `name` (the longest module prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in placed:
            return prefix
    return ""


def _device_name(device: int | str) -> str:
    # accelerate names GPUs by index; transformers' own maps may say "cuda:0".
    return f"cuda:{device}" if isinstance(device, int) else str(device)
