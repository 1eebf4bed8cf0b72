"""The sampling algorithm: the next token of every row of a batch, from [rows, vocab] logits.

Each row belongs to one request's `Sampler` (its parameters, penalty memory and random
generator). A request choosing alone is a one-row batch (`choose_alone`), so a row gets
the same token and log-probabilities alone or among any others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from app.engine.sampling.draw import NOT_FINITE, draw
from app.engine.sampling.params import Choice
from app.engine.sampling.rowparams import Repetition, RowParameters
from app.engine.sampling.state import Sampler
from app.engine.sampling.truncation import cutoffs

Alternatives = tuple[tuple[int, float], ...]


class BatchSampler:
    """Chooses the next token of every row at once, each with its own request's parameters.

    Per row, in this order: the repetition penalty, the logit bias, OpenAI's presence and
    frequency penalties, clamping of ±inf, the temperature; then the log-probabilities
    (for the rows that asked), top-k then top-p, and the draw. Each stage runs on the whole
    [rows, vocab] logits with per-row parameter tensors: one repetition-penalty
    gather/scatter, one sort for top-k/top-p, one softmax. Only the draw is per row, with
    the row's own generator on its own row of probabilities, so a seeded request draws the
    same random numbers alone or in any batch. The per-row parameter tensors are built
    again when the rows change.
    """

    def __init__(self) -> None:
        self._samplers: list[Sampler] = []
        self._params: RowParameters | None = None

    def choose(self, logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[Choice | Exception]:
        """Pick a token for each row of `logits` [rows, vocab]; row i belongs to `samplers[i]`.

        A row whose draw fails (NaN probabilities from a broken model) gets its exception
        (a RuntimeError) instead of a choice; the other rows are unaffected. Any other
        failure raises before a generator has drawn or a sampler has changed, so the caller
        can then choose row by row and still get every row's own random stream. `logits`
        is left unchanged.
        """
        if self._params is None or self._samplers != list(samplers):
            self._samplers = list(samplers)
            self._params = RowParameters(self._samplers, logits.shape[-1], logits.device)
        params = self._params
        scores = _process(logits, params, samplers)
        logprobs, tops = _logprobs(scores, params, samplers) if params.logprobs else (None, {})
        tokens = _draw(scores, params, samplers)
        chosen: dict[int, float] = {}
        if logprobs is not None:
            asked = [(j, i) for j, i in enumerate(params.logprobs) if isinstance(tokens[i], int)]
            index = torch.tensor([[j, tokens[i]] for j, i in asked], device=scores.device)
            values = logprobs[index[:, 0], index[:, 1]].tolist() if asked else []
            chosen = {i: value for (_, i), value in zip(asked, values, strict=True)}
        choices: list[Choice | Exception] = []
        for i, (sampler, token) in enumerate(zip(samplers, tokens, strict=True)):
            if isinstance(token, Exception):
                choices.append(token)
                continue
            sampler.record(token)
            choices.append(Choice(token, chosen.get(i), tops.get(i, ())))
        return choices


def choose_alone(logits: torch.Tensor, sampler: Sampler) -> Choice:
    """One request's next token from its row of `logits` [vocab]: a one-row batch.

    Raises the row's own failure (a RuntimeError for NaN probabilities) instead of
    returning it.
    """
    (choice,) = BatchSampler().choose(logits[None], [sampler])
    if isinstance(choice, Exception):
        raise choice
    return choice


def _process(
    logits: torch.Tensor, params: RowParameters, samplers: Sequence[Sampler]
) -> torch.Tensor:
    """Penalties, bias, ±inf clamping and temperature for every row: [rows, vocab] float32.

    A repetition penalty near 0 (or huge) pushes logits to ±inf; they are clamped to the
    largest finite float, which keeps their order. A tempered row's maximum is subtracted
    before dividing, so a temperature near 0 cannot overflow: the likeliest token then gets
    probability 1, as with greedy decoding. NaN logits from the model itself stay NaN, so
    a broken model fails loudly (its row's draw) instead of sampling garbage.
    """
    scores = logits.float()
    fresh = scores is not logits  # a copy already: no need to keep `logits` intact
    if params.repetition is not None:
        private = (scores if fresh else scores.clone()).contiguous()  # a flat view below
        scores = _penalize_repetition(private, params.repetition, samplers)
        fresh = True
    if params.bias is not None:
        scores = _add_rows(scores, params.bias.rows, params.bias.values, fresh)
        fresh = True
    if params.penalties is not None:
        # OpenAI's definition: logit[j] -= count[j] * frequency + (count[j] > 0) * presence.
        penalties = params.penalties
        counts = torch.stack(penalties.counts)
        penalty = counts * penalties.frequency
        penalty += (counts > 0).float() * penalties.presence
        scores = _add_rows(scores, penalties.rows, -penalty, fresh)
    if not params.sampled and not params.logprobs:
        # Greedy rows only read the argmax, which clamping ±inf cannot move (the order is
        # kept, and the first of tied maxima stays first): skip a [rows, vocab] copy a step.
        return scores
    largest = torch.finfo(scores.dtype).max
    scores = scores.nan_to_num(nan=float("nan"), posinf=largest, neginf=-largest)
    if params.tempered is not None:
        # Untempered rows subtract 0 and divide by 1: unchanged.
        shift = torch.where(params.tempered, scores.amax(dim=-1, keepdim=True), 0.0)
        scores = (scores - shift) / params.temperature
    if params.frozen is not None:
        # A temperature that is 0 in float32 (from 2**-150 down): its limit, where the row's
        # largest logits (0 once shifted) share the probability and the rest get none. A
        # NaN row stays all -inf, so its draw still fails.
        limit = torch.where(scores == 0, 0.0, float("-inf"))
        scores = torch.where(params.frozen, limit, scores)
    return scores


def _draw(
    scores: torch.Tensor, params: RowParameters, samplers: Sequence[Sampler]
) -> list[int | Exception]:
    """Each row's token (an int), or the exception its own draw raised."""
    tokens: list[int | Exception] = [0] * len(samplers)
    if params.greedy:
        greedy = scores if len(params.greedy) == len(samplers) else scores[params.greedy]
        best = greedy.argmax(dim=-1)  # NaN, where a row has one, counts as the largest
        top = greedy.gather(-1, best[:, None])[:, 0].tolist()
        for i, token, score in zip(params.greedy, best.tolist(), top, strict=True):
            # As `draw` refuses a sampled row: a NaN score (a broken model, or numbers that
            # overflowed) makes no token, rather than its id as if it were chosen. (±inf is
            # an extreme score like any other, as the clamping above treats it.)
            tokens[i] = RuntimeError(NOT_FINITE) if math.isnan(score) else token
    if not params.sampled:
        return tokens
    if params.truncation is not None:
        scores = scores.masked_fill(scores < cutoffs(scores, params.truncation), float("-inf"))
    sampled = scores if len(params.sampled) == len(samplers) else scores[params.sampled]
    probs = sampled.softmax(dim=-1)
    generators = [samplers[i].generator for i in params.sampled]
    for i, token in zip(params.sampled, draw(probs, generators), strict=True):
        tokens[i] = token
    return tokens


def _penalize_repetition(
    scores: torch.Tensor, repetition: Repetition, samplers: Sequence[Sampler]
) -> torch.Tensor:
    """The CTRL repetition penalty (Keskar et al. 2019, as transformers applies it) over
    each penalized row's prompt and output, in place on a contiguous [rows, vocab]: a seen
    token's logit is divided by the penalty when positive, multiplied when negative."""
    vocab, device = scores.shape[-1], scores.device
    seen = [samplers[i].seen for i in repetition.rows]
    lengths = torch.tensor([len(s) for s in seen], device=device)
    ids = torch.cat(seen)
    offsets = repetition.offsets.repeat_interleave(lengths)
    penalty = repetition.penalty.repeat_interleave(lengths)
    # Ids past the logits' vocabulary (a larger embedding) cannot be generated: HF skips them.
    inside = ids < vocab
    flat, penalty = (ids + offsets)[inside], penalty[inside]
    old = scores.view(-1).gather(0, flat)
    values = torch.where(old < 0, old * penalty, old / penalty)
    # A logit of 0 stays 0 (0 / p for any p > 0): a penalty that is 0 in float32 (under
    # 2**-149) would make it 0 / 0, NaN.
    values = torch.where(old == 0, old, values)
    scores.view(-1).scatter_(0, flat, values)  # a token seen twice gets the same value twice
    return scores


def _add_rows(
    scores: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, fresh: bool
) -> torch.Tensor:
    """`scores[rows] += values` ([len(rows), vocab]), in place when `scores` is already a
    private copy."""
    if len(rows) == scores.shape[0]:
        return scores.add_(values) if fresh else scores + values
    if not fresh:
        scores = scores.clone()
    return scores.index_copy_(0, rows, scores.index_select(0, rows) + values)


def _logprobs(
    scores: torch.Tensor, params: RowParameters, samplers: Sequence[Sampler]
) -> tuple[torch.Tensor, dict[int, Alternatives]]:
    """Log-probabilities (after the penalties and temperature, before top-k/top-p) of the
    rows that asked: [asked rows, vocab]; and, by row, the alternatives of the rows that
    asked for them (never more than the vocabulary has)."""
    asked = params.logprobs
    logprobs = scores if len(asked) == len(samplers) else scores[asked]
    logprobs = logprobs.log_softmax(dim=-1)
    tops: dict[int, Alternatives] = {}
    if params.top_logprobs:
        where = {i: j for j, i in enumerate(asked)}
        k = min(max(samplers[i].params.top_logprobs for i in params.top_logprobs), scores.shape[-1])
        values, ids = logprobs[[where[i] for i in params.top_logprobs]].topk(k)
        for i, row_values, row_ids in zip(
            params.top_logprobs, values.tolist(), ids.tolist(), strict=True
        ):
            n = samplers[i].params.top_logprobs
            tops[i] = tuple(zip(row_ids[:n], row_values[:n], strict=True))
    return logprobs, tops
