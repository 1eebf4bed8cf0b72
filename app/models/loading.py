"""Reading configs and loading weights, with every loading failure translated in one place."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import cached_file

from app.config import Settings
from app.engine import ModelWorker, fused_candidate, input_device
from app.engine.threads import run_on_new_thread
from app.errors import BadRequest, ModelLoadFailed, ModelNotFound
from app.models import dispatch, hub, progress
from app.models.loaded import LoadedModel, ModelProfile
from app.models.packing import drop_plain_weights, pack_linear_layers
from app.models.quantizing import quantize_linear_layers, weight_bytes
from app.models.resolution import ModelSpec

log = logging.getLogger(__name__)


def check_available(spec: ModelSpec) -> None:
    """Fail fast, before any weights are read, when a model cannot exist."""
    with _loading_errors(spec):
        AutoConfig.from_pretrained(spec.source, **_options(spec))


def read_config(spec: ModelSpec) -> tuple[PretrainedConfig, dict[str, Any]]:
    """The model's config and its config.json as stored."""
    with _loading_errors(spec):
        config = AutoConfig.from_pretrained(spec.source, **_options(spec))
        path = cached_file(spec.source, "config.json", local_files_only=_local_only(spec))
        if path is None:  # only with _raise_exceptions_for_missing_entries=False, not here
            raise OSError(f"{spec.source} has no config.json")
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    return config, raw


def load_profile(spec: ModelSpec) -> ModelProfile:
    """The model's tokenizer and config (fast: no weights); raises as `load` does."""
    with _loading_errors(spec, unexpected=True):
        tokenizer = AutoTokenizer.from_pretrained(spec.source, **_options(spec))
        config = AutoConfig.from_pretrained(spec.source, **_options(spec))
    text = config.get_text_config()
    hidden = getattr(text, "hidden_size", None)
    return ModelProfile(
        spec,
        tokenizer,
        _context_length(text),
        text.num_hidden_layers,
        text.num_attention_heads,
        hidden if isinstance(hidden, int) else None,
    )


def load(spec: ModelSpec, settings: Settings, profile: ModelProfile | None = None) -> LoadedModel:
    """Load the weights (slow, blocking) and start the model's worker thread.

    `profile` is the model's `load_profile`, when the caller has it already.
    Raises ModelNotFound, BadRequest (not a causal LM) or ModelLoadFailed.
    """
    device = _pick_device(settings.device)
    started = time.perf_counter()
    profile = profile or load_profile(spec)
    tracker = progress.of(spec.model_id) or progress.LoadProgress(spec.model_id)
    if not spec.local and not _local_only(spec):
        _download(spec, tracker)
    tracker.loading_weights()
    # The weights on a thread that then exits: its OpenMP team must not outlive the load
    # (see run_on_new_thread). The download above stays on the caller's thread: the hub
    # client's connections hold locks of the thread that made them.
    return run_on_new_thread(_load_weights, spec, settings, profile, device, started)


def _load_weights(
    spec: ModelSpec,
    settings: Settings,
    profile: ModelProfile,
    device: torch.device,
    started: float,
) -> LoadedModel:
    """`load`'s second half: the weights read, converted, packed or quantized, and the
    model's worker started."""
    placing = dispatch.loading_options(settings, spec.model_id)
    dtype = _pick_dtype(settings.dtype, device)
    with _loading_errors(spec, unexpected=True):
        read = partial(
            AutoModelForCausalLM.from_pretrained, spec.source, dtype=dtype, **_options(spec)
        )
        if placing:
            config = AutoConfig.from_pretrained(spec.source, **_options(spec))
            model = dispatch.load_split(read, placing, config)
        else:
            model = read()
    if not placing:
        # transformers wraps `to` with functools.wraps, which mypy cannot bind to an
        # instance; called on the model's own class, it is the same method and checks.
        type(model).to(model, device)
    model.eval()
    # A split model's offloaded weights read `meta` between passes: packing would copy
    # them back into memory (dispatch.py). LLMVIZ_QUANTIZE is refused with a device map.
    split = dispatch.is_split(model)
    quantized = _quantize(model, settings.quantize, spec)
    # The fused step reads plain weights, so packing keeps them for a model it may run.
    plain = settings.fused_step and fused_candidate(model)
    packed = pack_linear_layers(model, plain) if settings.packed_weights and not split else 0
    eos_ids = _eos_ids(model, profile.tokenizer)
    seconds = time.perf_counter() - started
    log.info(
        "loaded model %s on %s in %.2fs%s",
        spec.model_id,
        device,
        seconds,
        f" ({packed} linear layers packed for oneDNN)" if packed else "",
    )
    # The worker's thread starts last: a failure before it leaves no thread holding weights
    # that no listing shows.
    worker = ModelWorker(
        model,
        profile.tokenizer,
        eos_ids,
        settings.max_batch,
        settings.max_queue,
        prefill_chunk=settings.prefill_chunk,
        fused_step=settings.fused_step,
    )
    if plain and not worker.fused_step:  # no compiler, or it failed its check: no use
        drop_plain_weights(model)
    # The fused step's own copies (a Conv1D's weight transposed when nothing was packed)
    # are memory the model holds too.
    memory = weight_bytes(model) + worker.fused_step_bytes
    return LoadedModel(
        profile,
        worker,
        eos_ids,
        seconds,
        memory,
        device=str(input_device(model)),
        device_map=dispatch.describe(model),
        dtype=str(model.dtype).removeprefix("torch."),
        packed_layers=packed,
        quantization=settings.quantize if quantized else "none",
    )


def _quantize(model: PreTrainedModel, kind: str, spec: ModelSpec) -> int:
    """Quantize the linear layers as LLMVIZ_QUANTIZE asks; how many were replaced.

    Raises ModelLoadFailed where the model cannot be (a GPU picked by LLMVIZ_DEVICE=auto).
    """
    if kind == "none":
        return 0
    try:
        return quantize_linear_layers(model, kind)
    except ValueError as exc:
        raise ModelLoadFailed(f"loading model {spec.model_id!r} failed: {exc}") from None


def _download(spec: ModelSpec, tracker: progress.LoadProgress) -> None:
    """Fetch the repository's files first, so that their bytes can be reported as they come.

    If that fails, transformers' own download runs next: it fetches what is missing (without
    progress) or raises the error a client is told.
    """
    try:
        hub.download(spec.source, tracker)
    except Exception as exc:
        log.warning("downloading %s with progress failed (%s); loading it directly", spec, exc)


def _options(spec: ModelSpec) -> dict[str, bool]:
    # trust_remote_code stays off: a request must never run code from a repository.
    return {"trust_remote_code": False, "local_files_only": _local_only(spec)}


def _local_only(spec: ModelSpec) -> bool:
    # Out of the hub's reach, read its cache only: fail in moments instead of retrying.
    return not spec.local and hub.offline()


@contextmanager
def _loading_errors(spec: ModelSpec, unexpected: bool = False) -> Iterator[None]:
    """Turn what transformers and the hub raise into errors a client can read.

    OSError means the files are not there; ValueError, that they are not a model
    we can serve. With `unexpected`, anything else becomes ModelLoadFailed.
    """
    try:
        yield
    except OSError as exc:
        raise ModelNotFound(_not_found_message(spec, exc)) from None
    except ValueError as exc:  # e.g. a config that is not a causal language model
        raise BadRequest(f"model {spec.model_id!r} cannot be served: {_first_line(exc)}") from None
    except Exception as exc:
        if not unexpected:
            raise
        log.exception("loading %s failed", spec.model_id)
        raise ModelLoadFailed(
            f"loading model {spec.model_id!r} failed: {_first_line(exc)}"
        ) from None


def _pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadFailed("LLMVIZ_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def _pick_dtype(setting: str, device: torch.device) -> torch.dtype | str:
    # auto: float32 on CPU (half precision is slow there), the checkpoint's own dtype on GPU.
    if setting == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    return getattr(torch, setting)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def _context_length(config: PretrainedConfig) -> int | None:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _not_found_message(spec: ModelSpec, exc: OSError) -> str:
    if spec.local:
        return f"model folder {spec.model_id!r} has no loadable model: {_first_line(exc)}"
    if hub.offline():
        return (
            f"model {spec.model_id!r} is not under LLMVIZ_MODEL_ROOT nor in the local hub "
            "cache, and the Hugging Face hub cannot be reached (no network, or "
            f"HF_HUB_OFFLINE=1): {hub.OFFLINE_HELP}"
        )
    return (
        f"model {spec.model_id!r} is not under LLMVIZ_MODEL_ROOT and could not be loaded "
        "from the Hugging Face hub (offline, not cached, or no such repository): "
        f"{_first_line(exc)}"
    )
