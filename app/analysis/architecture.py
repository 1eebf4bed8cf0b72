"""A normalized description of any causal LM's architecture, from its config alone.

The browser view was written for GPT-2 (MLP of 4×C, head size C/heads); this
tells it the truth for Llama (grouped-query attention, gated MLP, RMSNorm,
rotary positions), Gemma-2 (head_dim ≠ C/heads, logit softcapping) and others.
Facts the config leaves implicit are read off the model built on the meta
device: no weights are loaded or allocated.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig

_ALIBI_FAMILIES = {"bloom", "mpt", "baichuan"}


def describe(config: PretrainedConfig, raw_config: dict[str, Any]) -> dict[str, Any]:
    """The normalized fields for GET /models/<id>/config.

    `config` is a transformers PretrainedConfig; `raw_config` is config.json as
    stored, returned unchanged under `raw_config`.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    skeleton = _meta_model(config)
    names = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()} if skeleton else set()
    classes = {type(m).__name__ for m in skeleton.modules()} if skeleton else set()
    d_model = _first(text, "hidden_size", "n_embd", "d_model")
    n_heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    d_head = _first(text, "head_dim") or (d_model // n_heads if d_model and n_heads else None)
    context = _first(text, "max_position_embeddings", "n_positions", "seq_length")
    n_layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _first(text, "vocab_size")
    return {
        "architecture": (getattr(config, "architectures", None) or [_class_name(skeleton)])[0],
        "family": config.model_type,
        "n_layers": n_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": _first(text, "num_key_value_heads", "n_head_kv", "num_kv_heads") or n_heads,
        "d_head": d_head,
        "d_mlp": _first(text, "intermediate_size", "n_inner", "ffn_dim")
        or (4 * d_model if d_model else None),
        "mlp_type": "gated" if names & {"gate_proj", "gate_up_proj", "w3"} else "standard",
        "act_fn": _first(text, "hidden_activation", "hidden_act", "activation_function"),
        "norm_type": "rmsnorm" if any("RMSNorm" in c for c in classes) else "layernorm",
        "positional": _positional(text, names),
        "vocab_size": vocab,
        "context_length": context,
        "tie_word_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
        "logit_softcap": _first(text, "final_logit_softcapping"),
        "n_params": sum(p.numel() for p in skeleton.parameters()) if skeleton else None,
        "llmviz_shape": {
            "B": 1,
            "T": context,
            "C": d_model,
            "nHeads": n_heads,
            "A": d_head,
            "nBlocks": n_layers,
            "vocabSize": vocab,
        },
        "raw_config": raw_config,
    }


def _meta_model(config: PretrainedConfig) -> torch.nn.Module | None:
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception:  # an architecture transformers cannot build: report what the config says
        return None


def _positional(config: PretrainedConfig, module_names: set[str]) -> str | None:
    if getattr(config, "alibi", False) or config.model_type in _ALIBI_FAMILIES:
        return "alibi"
    if "rotary_emb" in module_names or getattr(config, "rope_theta", None) is not None:
        return "rotary"
    if module_names & {"wpe", "embed_positions", "position_embeddings"}:
        return "learned"
    return None


def _first(config: PretrainedConfig, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _class_name(module: torch.nn.Module | None) -> str | None:
    return type(module).__name__ if module is not None else None
