"""Per-row sampling parameters of one batch composition, as tensors for [rows, vocab] logits.

Built once per composition of rows (BatchSampler keeps them while the rows stay the
same), so that a step does no per-row Python beyond the draw. Each group of rows that
need a processing stage (bias, penalties, top-k/top-p) is None when no row needs it,
and the stage is then skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.sampling.params import SamplingParams
from app.engine.sampling.state import Sampler

_FLOAT32_MAX = torch.finfo(torch.float32).max
# Half the smallest positive float32 (2**-149): a float64 this small or smaller is 0 in
# float32 (2**-150 itself rounds to the even neighbour, 0).
_ROUNDS_TO_ZERO = 2.0**-150


@dataclass(frozen=True)
class Repetition:
    """The rows with a repetition penalty, for one gather/scatter over [rows * vocab]."""

    rows: list[int]
    offsets: torch.Tensor  # [repeated] long: each row's start in the flattened logits
    penalty: torch.Tensor  # [repeated] float32: each row's penalty


@dataclass(frozen=True)
class Bias:
    """The rows with a logit bias and their biases."""

    rows: torch.Tensor  # [biased] long
    values: torch.Tensor  # [biased, vocab] float32, added to the logits


@dataclass(frozen=True)
class Penalties:
    """The rows with OpenAI presence/frequency penalties."""

    rows: torch.Tensor  # [penalized] long
    counts: list[torch.Tensor]  # each [vocab]: the samplers' own counts, updated in place
    frequency: torch.Tensor  # [penalized, 1] float32
    presence: torch.Tensor  # [penalized, 1] float32


@dataclass(frozen=True)
class Truncation:
    """The rows cut by top-k and/or top-p before the draw."""

    rows: torch.Tensor  # [truncated] long
    every_row: bool  # all the batch's rows are truncated: no gather/scatter of rows
    kth: torch.Tensor  # [truncated] long: the k-th largest value's index in ascending order
    any_top_k: bool
    any_top_p: bool
    top_p_floor: torch.Tensor  # [truncated, 1] float32: 1 - top_p (-inf: no top-p)


class RowParameters:
    """The sampling parameters of every row of a batch, as index lists and tensors."""

    def __init__(self, samplers: Sequence[Sampler], vocab: int, device: torch.device) -> None:
        params = [s.params for s in samplers]

        def column(values: list[float]) -> torch.Tensor:
            return _column(values, device)

        def index(rows: list[int]) -> torch.Tensor:
            return _index(rows, device)

        self.greedy = [i for i, p in enumerate(params) if p.greedy]
        self.sampled = [i for i, p in enumerate(params) if not p.greedy]

        repeated = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        self.repetition = (
            Repetition(
                repeated,
                index(repeated) * vocab,
                torch.tensor([params[i].repetition_penalty for i in repeated], device=device),
            )
            if repeated
            else None
        )

        biased = [i for i, p in enumerate(params) if p.logit_bias]
        self.bias = (
            Bias(index(biased), torch.stack([samplers[i].bias(vocab, device) for i in biased]))
            if biased
            else None
        )

        penalized = [i for i, p in enumerate(params) if p.penalized]
        self.penalties = (
            Penalties(
                index(penalized),
                [samplers[i].vocab_counts(vocab, device) for i in penalized],
                column([params[i].frequency_penalty for i in penalized]),
                column([params[i].presence_penalty for i in penalized]),
            )
            if penalized
            else None
        )

        tempered = [p.tempered for p in params]
        # [rows, 1] bool: which rows subtract their maximum (the others subtract 0).
        self.tempered = torch.tensor(tempered, device=device)[:, None] if any(tempered) else None
        # A temperature that is 0 in float32 would divide 0 by 0 (NaN): such rows divide by 1
        # and `frozen` makes them the limit instead. One past float32's largest would be inf,
        # and a clamped logit's -inf (-largest minus a large maximum) / inf is NaN: it is the
        # largest float32 instead, whose softmax is as flat as float32 can show for any
        # logits but the clamped ones.
        frozen = [p.tempered and p.temperature <= _ROUNDS_TO_ZERO for p in params]
        # [rows, 1] bool: the rows whose temperature is 0 in float32, or None if no row's is.
        self.frozen = torch.tensor(frozen, device=device)[:, None] if any(frozen) else None
        # [rows, 1]: the others divide by 1, which changes nothing.
        self.temperature = column(
            [
                min(p.temperature, _FLOAT32_MAX) if p.tempered and not cold else 1.0
                for p, cold in zip(params, frozen, strict=True)
            ]
        )

        self.truncation = _truncation(params, vocab, device)
        self.logprobs = [i for i, p in enumerate(params) if p.logprobs]
        self.top_logprobs = [i for i, p in enumerate(params) if p.logprobs and p.top_logprobs]


def _truncation(
    params: list[SamplingParams], vocab: int, device: torch.device
) -> Truncation | None:
    truncated = [i for i, p in enumerate(params) if p.truncated]
    if not truncated:
        return None
    # Keep the k largest (0: keep all, i.e. k = vocab); HF never keeps fewer than 1.
    top_k = [min(max(params[i].top_k, 1), vocab) if params[i].top_k else vocab for i in truncated]
    # HF compares with 1 - top_p as a float32; rows without top-p remove nothing.
    below = [1 - params[i].top_p if params[i].top_p < 1.0 else float("-inf") for i in truncated]
    return Truncation(
        rows=_index(truncated, device),
        every_row=len(truncated) == len(params),
        kth=_index([vocab - k for k in top_k], device),
        any_top_k=any(params[i].top_k > 0 for i in truncated),
        any_top_p=any(params[i].top_p < 1.0 for i in truncated),
        top_p_floor=_column(below, device),
    )


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    """[rows, 1] float32, as the logits."""
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    """[rows] long row indices."""
    return torch.tensor(rows, dtype=torch.long, device=device)
