"""One forward pass that exposes what happens inside the model (runs on the model's thread).

- next-token distributions per position;
- the logit lens: each layer's residual stream, through the final norm and the
  unembedding (and the final softcap where the config has one);
- attention patterns per layer and head (eager attention, switched on for the pass);
- the norm of the residual stream at each layer's input and output.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from app.engine import CausalLM, HeadSelection, ModelTask, Tokenizer, tensors
from app.engine.attention import eager_attention
from app.engine.decoding import standalone_texts

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


@dataclass(frozen=True)
class Selection:
    """What an inspection returns: the parts in `include`, over the layers and heads of `scope`."""

    include: frozenset[str]
    scope: HeadSelection
    top_k: int = 10
    attention_format: str = "topk"
    attention_k: int = 8


def inspection_task(ids: list[int], sel: Selection) -> ModelTask[dict[str, Any]]:
    """A task for the model's thread that inspects `ids` and returns the JSON-ready parts."""
    return ModelTask(lambda model, tokenizer: inspect(model, tokenizer, ids, sel))


def decoder_layers(model: CausalLM) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks."""
    n_layers = model.config.get_text_config().num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError("cannot find this model's transformer blocks")


@torch.inference_mode()
def inspect(
    model: CausalLM, tokenizer: Tokenizer, ids: list[int], sel: Selection
) -> dict[str, Any]:
    """Run the pass and return the requested parts, tensors compactly encoded."""
    blocks = decoder_layers(model)
    layers = list(sel.scope.layers)
    residuals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    if sel.include & {"logit_lens", "resid_norms"}:
        hooks = [_capture(blocks[i], i, residuals) for i in layers]
    want_attention = "attention" in sel.include
    try:
        with eager_attention(model) if want_attention else nullcontext():
            out = model(
                torch.tensor([ids], device=model.device),
                use_cache=False,
                output_attentions=want_attention,
            )
    finally:
        for hook in hooks:
            hook.remove()
    answer: dict[str, Any] = {"layers": layers}
    seen_ids: list[int] = []
    if "next_token" in sel.include:
        answer["next_token"] = _next_token(out.logits[0].float(), sel.top_k, seen_ids)
    if "logit_lens" in sel.include:
        answer["logit_lens"] = _logit_lens(model, ids, layers, residuals, sel.top_k, seen_ids)
    if want_attention:
        answer["attention"] = _attention(out.attentions, layers, sel)
    if "resid_norms" in sel.include:
        answer["resid_norms"] = {
            part: tensors.encode(
                torch.stack([residuals[i][j].norm(dim=-1) for i in layers]), "float32"
            )
            for j, part in enumerate(("input", "output"))
        }
    if seen_ids:
        answer["token_text"] = {str(k): v for k, v in standalone_texts(tokenizer, seen_ids).items()}
    return answer


def _capture(block: torch.nn.Module, index: int, into: dict) -> Any:
    """Record a block's residual-stream input and output (before any final norm)."""

    def hook(module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        into[index] = (hidden_in[0].float(), hidden_out[0].float())

    return block.register_forward_hook(hook, with_kwargs=True)


def _next_token(logits: torch.Tensor, k: int, seen_ids: list[int]) -> dict[str, Any]:
    probs = logits.softmax(dim=-1)
    top_probs, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    seen_ids += top_ids.flatten().tolist()
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)
    return {
        "ids": tensors.encode(top_ids, "int32"),
        "probs": tensors.encode(top_probs, "float16"),
        "other_prob": tensors.encode((1 - top_probs.sum(dim=-1)).clamp_min(0), "float32"),
        "entropy": tensors.encode(entropy, "float32"),
    }


def _logit_lens(model, ids, layers, residuals, k, seen_ids) -> dict[str, Any]:
    final_norm = _final_norm(model)
    unembed = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    targets = torch.tensor(ids[1:] + [-1], device=model.device)
    all_ids, all_probs, ranks = [], [], []
    for layer in layers:  # one layer at a time: [T, vocab] logits are large
        hidden = residuals[layer][1].to(unembed.weight.dtype)
        logits = unembed(final_norm(hidden)).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        probs = logits.softmax(dim=-1)
        top_probs, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
        all_ids.append(top_ids)
        all_probs.append(top_probs)
        actual = logits.gather(1, targets.clamp_min(0)[:, None])
        rank = (logits > actual).sum(dim=-1)
        ranks.append(torch.where(targets >= 0, rank, torch.full_like(rank, -1)))
    top_ids = torch.stack(all_ids)
    seen_ids += top_ids.flatten().tolist()
    return {
        "ids": tensors.encode(top_ids, "int32"),
        "probs": tensors.encode(torch.stack(all_probs), "float16"),
        "next_token_rank": tensors.encode(torch.stack(ranks), "int32"),
    }


def _final_norm(model: CausalLM) -> torch.nn.Module:
    for name in _FINAL_NORMS:
        module = getattr(model.base_model, name, None)
        if module is not None:
            return module
    return torch.nn.Identity()


def _attention(attentions, layers: list[int], sel: Selection) -> dict[str, Any]:
    stacked = torch.stack([attentions[i][0] for i in layers]).float()  # [L, H, T, T]
    if sel.scope.heads is not None:
        stacked = stacked[:, list(sel.scope.heads)]
    if sel.attention_format == "dense":
        return {"format": "dense", "weights": tensors.encode(stacked, "float16")}
    k = min(sel.attention_k, stacked.shape[-1])
    weights, keys = stacked.topk(k, dim=-1)
    query = torch.arange(stacked.shape[-2], device=keys.device)[:, None]
    future = keys > query  # causal: a row has only query+1 real keys
    return {
        "format": "topk",
        "k": k,
        "weights": tensors.encode(weights.masked_fill(future, 0), "float16"),
        "indices": tensors.encode(keys.masked_fill(future, -1), "int32"),
    }


def estimate_bytes(tokens: int, n_heads: int, sel: Selection) -> int:
    """An upper estimate of the answer's JSON size in bytes, made before running anything.

    `n_heads` is the model's head count, used when the selection takes every head.
    """
    layers = len(sel.scope.layers)
    heads = len(sel.scope.heads) if sel.scope.heads is not None else n_heads
    size = 1024
    top = tokens * sel.top_k
    if "tokens" in sel.include:
        size += tokens * 120
    if "next_token" in sel.include:
        size += tensors.encoded_size(top, "int32") + tensors.encoded_size(top, "float16")
        size += 2 * tensors.encoded_size(tokens, "float32") + top * 32  # + candidate texts
    if "logit_lens" in sel.include:
        lens = layers * top
        size += tensors.encoded_size(lens, "int32") + tensors.encoded_size(lens, "float16")
        size += tensors.encoded_size(layers * tokens, "int32") + lens * 32
    if "attention" in sel.include:
        rows = layers * heads * tokens
        if sel.attention_format == "dense":
            size += tensors.encoded_size(rows * tokens, "float16")
        else:
            k = min(sel.attention_k, tokens)
            size += tensors.encoded_size(rows * k, "float16")
            size += tensors.encoded_size(rows * k, "int32")
    if "resid_norms" in sel.include:
        size += 2 * tensors.encoded_size(layers * tokens, "float32")
    return size
