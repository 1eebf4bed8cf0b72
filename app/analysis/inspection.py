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

from app.analysis.patterns import PatternRecorder
from app.engine import CausalLM, HeadSelection, ModelTask, Tokenizer, input_device, tensors
from app.engine.attention import eager_attention
from app.engine.decoding import standalone_texts
from app.engine.interventions import InterventionSet, decoder_blocks

# Bytes of float32 [positions, vocab] logits worked on at once (see `positions_per_chunk`).
CHUNK_BYTES = 64 << 20
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


@dataclass(frozen=True)
class Selection:
    """What an inspection returns: the parts in `include`, over the layers and heads of `scope`."""

    include: frozenset[str]
    scope: HeadSelection
    top_k: int = 10
    attention_format: str = "topk"
    attention_k: int = 8


def inspection_task(
    ids: list[int], sel: Selection, interventions: InterventionSet | None = None
) -> ModelTask[dict[str, Any]]:
    """A task for the model's thread that inspects `ids` and returns the JSON-ready parts;
    with `interventions`, of the model they change."""

    def run(model: CausalLM, tokenizer: Tokenizer) -> dict[str, Any]:
        with nullcontext() if interventions is None else interventions.applied(model):
            return inspect(model, tokenizer, ids, sel)

    return ModelTask(run)


@torch.inference_mode()
def inspect(
    model: CausalLM, tokenizer: Tokenizer, ids: list[int], sel: Selection
) -> dict[str, Any]:
    """Run the pass and return the requested parts, tensors compactly encoded."""
    blocks = decoder_blocks(model)
    layers = list(sel.scope.layers)
    residuals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    if sel.include & {"logit_lens", "resid_norms"}:
        hooks = [_capture(blocks[i], i, residuals) for i in layers]
    want_attention = "attention" in sel.include
    heads = None if sel.scope.heads is None else list(sel.scope.heads)
    patterns = PatternRecorder(model, blocks, layers, heads, sel.attention_format, sel.attention_k)
    try:
        with eager_attention(model) if want_attention else nullcontext():
            with patterns if want_attention else nullcontext():
                out = model(
                    torch.tensor([ids], device=input_device(model)),
                    use_cache=False,
                    output_attentions=want_attention and patterns.needs_output,
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
        answer["attention"] = patterns.answer(out.attentions)
    if "resid_norms" in sel.include:
        answer["resid_norms"] = {
            part: tensors.encode_pieces(
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


def positions_per_chunk(vocab: int) -> int:
    """How many positions' logits are worked on at once: `CHUNK_BYTES` of them, so memory
    does not grow with the input (333 positions for GPT-2's 50,257 tokens, 65 for 256,000).

    Not fewer: glibc's malloc serves blocks under 32 MiB from its heaps, where a lens of
    a few hundred freed 13 MB blocks (64 positions) left 3.6 GB resident, not 0.3 GB.
    Blocks this size are mapped and unmapped each time.
    """
    return max(1, CHUNK_BYTES // (4 * vocab))


def _next_token(logits: torch.Tensor, k: int, seen_ids: list[int]) -> dict[str, Any]:
    """Top-k candidates, the rest's mass and the entropy at each position of `logits`
    [T, vocab]; a chunk of positions at a time, so temporaries do not grow with T."""
    k = min(k, logits.shape[-1])
    top_probs, top_ids, entropy = [], [], []
    for rows in logits.split(positions_per_chunk(logits.shape[-1])):
        probs = rows.float().softmax(dim=-1)
        chunk_probs, chunk_ids = probs.topk(k, dim=-1)
        top_probs.append(chunk_probs)
        top_ids.append(chunk_ids)
        entropy.append(-(probs * probs.clamp_min(1e-30).log()).sum(dim=-1))
    probs_k, ids_k = torch.cat(top_probs), torch.cat(top_ids)
    seen_ids += ids_k.unique().tolist()
    return {
        "ids": tensors.encode_pieces(ids_k, "int32"),
        "probs": tensors.encode_pieces(probs_k, "float16"),
        "other_prob": tensors.encode_pieces((1 - probs_k.sum(dim=-1)).clamp_min(0), "float32"),
        "entropy": tensors.encode_pieces(torch.cat(entropy), "float32"),
    }


def _output_size(layer: torch.nn.Module) -> int:
    """The width of a linear layer's output (the vocabulary, for an LM head): `out_features`
    where it says (nn.Linear, packed or quantized layers), else its weight's rows."""
    size = getattr(layer, "out_features", None)
    weight = getattr(layer, "weight", None)
    if size is None and isinstance(weight, torch.Tensor):
        size = weight.shape[0]
    if size is None:
        raise TypeError(f"{type(layer).__name__} says neither its out_features nor its weight")
    return int(size)


def _logit_lens(model, ids, layers, residuals, k, seen_ids) -> dict[str, Any]:
    """Each layer's top-k through the final norm and the unembedding, and the rank of the
    actual next token. Only what is returned is kept: the [positions, vocab] logits are
    made a chunk of positions of one layer at a time, never [layers, positions, vocab]."""
    final_norm = _final_norm(model)
    unembed = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    targets = torch.tensor(ids[1:] + [-1], device=input_device(model))
    vocab = _output_size(unembed)
    k = min(k, vocab)
    rows = positions_per_chunk(vocab)
    all_ids, all_probs, ranks = [], [], []
    for layer in layers:
        hidden = residuals[layer][1]
        for start in range(0, len(ids), rows):
            logits = unembed(final_norm(hidden[start : start + rows].to(model.dtype)))
            logits = logits.float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            top_probs, top_ids = logits.softmax(dim=-1).topk(k, dim=-1)
            all_ids.append(top_ids)
            all_probs.append(top_probs)
            wanted = targets[start : start + rows].to(logits.device)
            actual = logits.gather(1, wanted.clamp_min(0)[:, None])
            rank = (logits > actual).sum(dim=-1)
            ranks.append(torch.where(wanted >= 0, rank, torch.full_like(rank, -1)))
    shape = (len(layers), len(ids))
    top_ids = torch.cat(all_ids).reshape(*shape, k)
    seen_ids += top_ids.unique().tolist()
    return {
        "ids": tensors.encode_pieces(top_ids, "int32"),
        "probs": tensors.encode_pieces(torch.cat(all_probs).reshape(*shape, k), "float16"),
        "next_token_rank": tensors.encode_pieces(torch.cat(ranks).reshape(shape), "int32"),
    }


def _final_norm(model: CausalLM) -> torch.nn.Module:
    for name in _FINAL_NORMS:
        module = getattr(model.base_model, name, None)
        if module is not None:
            return module
    return torch.nn.Identity()


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
