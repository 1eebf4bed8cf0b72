"""Scoring a text: the logprob the model gives each of its tokens (on the model's thread).

This is what evaluation harnesses read from an OpenAI `echo` request: for every
token after the first, log softmax of the logits at the position before it,
taken at the token's id. The first token has no context, so no score.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from app.engine import CausalLM, ModelTask, Tokenizer, input_device
from app.engine.decoding import standalone_texts
from app.engine.interventions import InterventionSet

_ROWS_PER_CHUNK = 256  # [rows, vocab] float32 at a time: 50 MB for a 50k vocabulary


@dataclass(frozen=True)
class TokenScores:
    """Per token of the scored ids: its logprob (None for the first) and the top alternatives.

    `top[i]` holds up to `top_n` (token id, logprob) pairs for position i, likeliest first
    (empty for the first token); `texts` maps every id in `top` to its display text.
    Logprobs are natural logarithms of the model's own distribution: no temperature.
    """

    logprobs: list[float | None]
    top: list[tuple[tuple[int, float], ...]]
    texts: dict[int, str]


def scoring_task(
    ids: list[int], top_n: int = 0, interventions: InterventionSet | None = None
) -> ModelTask[TokenScores]:
    """A task for the model's thread that scores `ids` (one forward pass, no KV cache kept);
    with `interventions`, as the model they change scores them."""

    def run(model: CausalLM, tokenizer: Tokenizer) -> TokenScores:
        with nullcontext() if interventions is None else interventions.applied(model):
            return score(model, tokenizer, ids, top_n)

    return ModelTask(run)


@torch.inference_mode()
def score(model: CausalLM, tokenizer: Tokenizer, ids: list[int], top_n: int = 0) -> TokenScores:
    """Score `ids` (shape [T]) with one forward pass; see `TokenScores`."""
    logits = model(torch.tensor([ids], device=input_device(model)), use_cache=False).logits[0]
    targets = torch.tensor(ids[1:], device=logits.device)
    logprobs: list[float | None] = [None]
    top: list[tuple[tuple[int, float], ...]] = [()]
    for start in range(0, len(ids) - 1, _ROWS_PER_CHUNK):
        rows = logits[start : start + _ROWS_PER_CHUNK].float().log_softmax(dim=-1)
        rows = rows[: len(targets) - start]
        logprobs += rows.gather(1, targets[start : start + len(rows), None])[:, 0].tolist()
        if top_n:
            values, top_ids = rows.topk(min(top_n, rows.shape[-1]), dim=-1)
            top += [
                tuple(zip(i, v, strict=True))
                for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)
            ]
        else:
            top += [()] * len(rows)
    seen = [token_id for pairs in top for token_id, _ in pairs]
    return TokenScores(logprobs, top, standalone_texts(tokenizer, seen) if seen else {})
