"""Top-k, then top-p (nucleus sampling, Holtzman et al. 2019), for every row at once.

The rules are those of transformers' TopKLogitsWarper and TopPLogitsWarper, applied in
that order (the tests check against them): top-k keeps the k largest logits; top-p then
removes the least likely tokens whose cumulative probability, counted from the least
likely up, is at most 1 - top_p (as a float32), and always keeps at least one token.
"""

from __future__ import annotations

import numpy as np
import torch

from app.engine.sampling.rowparams import Truncation


def cutoffs(scores: torch.Tensor, truncation: Truncation) -> torch.Tensor:
    """The smallest logit each row keeps after top-k, then top-p: [rows, 1] (-inf: keeps all).

    `scores` is [rows, vocab]. What top-k then top-p remove is a prefix of the ascending
    order, so one sort of the values (no indices) serves both, and a threshold puts it
    back in vocabulary order instead of a scatter. The softmax and cumulative sum run on
    the same sorted, top-k-filtered values as TopPLogitsWarper's, so the cut falls in the
    same place; only tokens tied with the last kept one are all kept.
    """
    subset = scores if truncation.every_row else scores[truncation.rows]
    ordered = _sorted(subset)
    # Top-k keeps what is not below the k-th largest value (k = vocab: everything).
    cutoff = ordered.gather(1, truncation.kth[:, None])
    if truncation.any_top_p:
        kept = (
            ordered.masked_fill(ordered < cutoff, float("-inf"))
            if truncation.any_top_k
            else ordered
        )
        cumulative = kept.softmax(dim=-1).cumsum(dim=-1)
        # Cumulative probabilities only grow: the removed tokens are the first `removed`.
        removed = (cumulative <= truncation.top_p_floor).sum(dim=-1, keepdim=True)
        removed = removed.clamp_max(ordered.shape[-1] - 1)  # keep at least one token
        cutoff = torch.maximum(cutoff, ordered.gather(1, removed))
    if truncation.every_row:
        return cutoff
    every = torch.full((scores.shape[0], 1), float("-inf"), device=scores.device)
    return every.index_copy_(0, truncation.rows, cutoff)


def _sorted(scores: torch.Tensor) -> torch.Tensor:
    """Each row's values in ascending order: [rows, vocab]."""
    if scores.device.type == "cpu":
        # NumPy's vectorized sort is several times faster than torch.sort on CPU,
        # and one thread is enough: no waiting for a busy core.
        return torch.from_numpy(np.sort(scores.numpy(), axis=-1))
    return torch.sort(scores, dim=-1).values
