"""Choosing the next token from logits, reproducibly: per request, and for a whole batch at once.

`Sampler` holds one request's state (the tokens its repetition penalty reads, its
OpenAI penalty counts, its logit bias and its random generator) and can choose
alone; `BatchSampler` chooses for every row of a batch with tensor operations over
[rows, vocab] and gives exactly the same tokens and log-probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; mirrors the request fields of /generate."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # subtracted once from each generated token's logit
    frequency_penalty: float = 0.0  # ... and this times the number of times it was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: bool = False  # report the chosen token's log-probability
    top_logprobs: int = 0  # ... and this many likeliest alternatives

    @property
    def greedy(self) -> bool:
        """Temperature 0 means always taking the likeliest token."""
        return self.temperature == 0

    @property
    def tempered(self) -> bool:
        """Whether the temperature changes the logits (greedy and 1.0 leave them alone)."""
        return not self.greedy and self.temperature != 1.0

    @property
    def truncated(self) -> bool:
        """Whether top-k or top-p cuts the distribution before the draw."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


@dataclass(frozen=True)
class Choice:
    """A chosen token and, when asked for, its log-probability and the likeliest alternatives."""

    token_id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


class Sampler:
    """One request's sampling state; `choose` applies its processors to one row.

    A private generator per request keeps a seeded result independent of
    whatever else the server is generating at the same time.
    """

    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device) -> None:
        self.params = params
        # Only the repetition penalty reads the tokens seen so far: keep them only for it.
        self._track = params.repetition_penalty != 1.0
        capacity = len(prompt_ids) + params.max_new_tokens if self._track else 0
        self._seen = torch.zeros((1, capacity), dtype=torch.long, device=device)
        if self._track:
            self._seen[0, : len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        self._length = len(prompt_ids) if self._track else 0
        self._shape = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            self._shape.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        # OpenAI's penalties count generated tokens only (not the prompt's): one count each.
        self.penalized = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self.counts: torch.Tensor | None = None  # [vocab], made at the first step
        self._bias: torch.Tensor | None = None  # [vocab], made at the first step
        self._truncate = LogitsProcessorList()
        if params.top_k > 0:
            self._truncate.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self._truncate.append(TopPLogitsWarper(params.top_p))
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    @property
    def seen(self) -> torch.Tensor:
        """Prompt and generated tokens, for the repetition penalty: [length] (empty without it)."""
        return self._seen[0, : self._length]

    def choose(self, logits: torch.Tensor) -> Choice:
        """Pick the next token from a 1-D row of logits and remember it."""
        seen = self._seen[:, : self._length]
        scores = self._shape(seen, logits.float().unsqueeze(0))
        if self.params.logit_bias:
            scores = scores + self.bias(scores.shape[-1], scores.device)
        if self.penalized:
            scores = scores - self.penalty(self.vocab_counts(scores.shape[-1], scores.device))
        scores = _temper(scores, self.params)
        if self.params.greedy:
            token = scores.argmax(dim=-1)
        else:
            probs = self._truncate(seen, scores).softmax(dim=-1)
            (token,) = draw(probs, [self.generator])
            if isinstance(token, Exception):
                raise token
        token_id = int(token)
        self.record(token_id)
        if not self.params.logprobs:
            return Choice(token_id)
        logprobs = scores[0].log_softmax(dim=-1)
        return _choice(token_id, logprobs, self.params.top_logprobs)

    def record(self, token_id: int) -> None:
        """Remember a chosen token for the penalties."""
        if self._track:
            self._seen[0, self._length] = token_id
            self._length += 1
        if self.counts is not None:
            self.counts[token_id] += 1

    def bias(self, vocab: int, device: torch.device) -> torch.Tensor:
        """The logit bias as a dense row: [vocab]."""
        if self._bias is None:
            self._bias = torch.zeros(vocab, dtype=torch.float32, device=device)
            ids, values = zip(*self.params.logit_bias, strict=True)
            self._bias[list(ids)] = torch.tensor(values, device=device)
        return self._bias

    def vocab_counts(self, vocab: int, device: torch.device) -> torch.Tensor:
        """How many times each token was generated: [vocab] (the penalties read it)."""
        if self.counts is None:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        return self.counts

    def penalty(self, counts: torch.Tensor) -> torch.Tensor:
        """Presence and frequency penalties, as the OpenAI API defines them:
        `logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty`."""
        penalty = counts * self.params.frequency_penalty
        penalty += (counts > 0).float() * self.params.presence_penalty
        return penalty


class BatchSampler:
    """Chooses the next token of every row at once, exactly as each row's `Sampler` would.

    The processors run on the whole [rows, vocab] logits with per-row parameters:
    one repetition-penalty gather/scatter, one sort for top-k/top-p, one softmax.
    Only the draw is per row, with the row's own generator on its own row of
    probabilities, so a seeded request draws the same random numbers alone or
    in any batch. The per-row parameter tensors are built again when the rows change.
    """

    def __init__(self) -> None:
        self._samplers: list[Sampler] = []
        self._rows: _Rows | None = None

    def choose(self, logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[Choice | Exception]:
        """Pick a token for each row of `logits` [rows, vocab]; row i belongs to `samplers[i]`.

        A row whose draw fails (NaN probabilities from a broken model) gets its exception
        instead of a choice; the other rows are unaffected. Any other failure raises
        before a generator has drawn or a sampler has changed, so the caller can then
        choose row by row and still get every row's own random stream.
        """
        if self._rows is None or self._samplers != list(samplers):
            self._samplers = list(samplers)
            self._rows = _Rows(self._samplers, logits.shape[-1], logits.device)
        rows = self._rows
        scores = self._process(logits, rows, samplers)
        logprobs, tops = _logprobs(scores, rows, samplers) if rows.logprobs else (None, {})
        tokens = _draw(scores, rows, samplers)
        chosen: dict[int, float] = {}
        if logprobs is not None:
            asked = [(j, i) for j, i in enumerate(rows.logprobs) if isinstance(tokens[i], int)]
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

    @staticmethod
    def _process(logits: torch.Tensor, rows: _Rows, samplers: Sequence[Sampler]) -> torch.Tensor:
        """Penalties, bias, NaN/inf clamping and temperature for every row, in Sampler's order."""
        scores = logits.float()
        fresh = scores is not logits  # a copy already: no need to keep `logits` intact
        if rows.repeat:
            private = (scores if fresh else scores.clone()).contiguous()  # a flat view below
            scores = _penalize_repetition(private, rows, samplers)
            fresh = True
        if rows.biased is not None:
            scores = _add_rows(scores, rows.biased, rows.bias, fresh)
            fresh = True
        if rows.penalized is not None:
            counts = torch.stack([samplers[i].counts for i in rows.penalized.tolist()])
            penalty = counts * rows.frequency
            penalty += (counts > 0).float() * rows.presence
            scores = _add_rows(scores, rows.penalized, -penalty, fresh)
        largest = torch.finfo(scores.dtype).max
        scores = scores.nan_to_num(nan=float("nan"), posinf=largest, neginf=-largest)
        if rows.tempered is not None:
            # What _temper does, on the tempered rows only: other rows subtract 0 and divide by 1.
            shift = torch.where(rows.tempered, scores.amax(dim=-1, keepdim=True), 0.0)
            scores = (scores - shift) / rows.temperature
        return scores


def _draw(scores: torch.Tensor, rows: _Rows, samplers: Sequence[Sampler]) -> list:
    """Each row's token (an int), or the exception its own draw raised."""
    tokens: list = [0] * len(samplers)
    if rows.greedy:
        greedy = scores if len(rows.greedy) == len(samplers) else scores[rows.greedy]
        for i, token in zip(rows.greedy, greedy.argmax(dim=-1).tolist(), strict=True):
            tokens[i] = token
    if not rows.sampled:
        return tokens
    if rows.truncated is not None:
        scores = scores.masked_fill(scores < _cutoffs(scores, rows), float("-inf"))
    sampled = scores if len(rows.sampled) == len(samplers) else scores[rows.sampled]
    probs = sampled.softmax(dim=-1)
    # The same draw on the same row of probabilities as Sampler.choose: the same token.
    generators = [samplers[i].generator for i in rows.sampled]
    for i, token in zip(rows.sampled, draw(probs, generators), strict=True):
        tokens[i] = token
    return tokens


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> list[int | Exception]:
    """One token per row of `probs` [rows, vocab], row i drawn with `generators[i]`.

    Inverse-CDF sampling: one uniform number per row from the row's own generator, looked
    up in the row's cumulative probabilities (float64, so 50,000 float32 terms sum without
    visible rounding). `torch.multinomial` draws one exponential number per vocabulary
    entry for a single sample, about 1 ms a row for a 50,257-token vocabulary on this
    project's CPU: at 16 rows, a fifth of a decoding step. A row whose probabilities are
    not a distribution (NaN from a broken model) gets a RuntimeError instead of a token.
    """
    cumulative = probs.double().cumsum(dim=-1)  # [rows, vocab]
    totals = cumulative[:, -1]
    uniforms = torch.cat(
        [torch.rand(1, generator=g, dtype=torch.float64, device=probs.device) for g in generators]
    )
    # right=True: the first entry whose cumulative probability exceeds u * total, which
    # never is a token of probability 0 (those repeat the previous entry's cumulative sum).
    found = torch.searchsorted(cumulative, (uniforms * totals)[:, None], right=True)
    found = found.clamp_max(probs.shape[-1] - 1)  # u * total rounded up to the total
    chosen = probs.gather(1, found)[:, 0].tolist()  # > 0, unless it rounded up past the end
    tokens: list[int | Exception] = []
    rows = zip(found[:, 0].tolist(), chosen, totals.tolist(), strict=True)
    for row, (token, probability, total) in enumerate(rows):
        if not 0 < total < math.inf:
            tokens.append(RuntimeError("the probabilities are not a distribution (NaN or inf)"))
        elif probability <= 0:
            tokens.append(int(probs[row].nonzero()[-1]))  # the last possible token
        else:
            tokens.append(token)
    return tokens


class _Rows:
    """Per-row parameters of one batch composition, as tensors ready for [rows, vocab] logits."""

    def __init__(self, samplers: Sequence[Sampler], vocab: int, device: torch.device) -> None:
        params = [s.params for s in samplers]

        def column(values: list[float]) -> torch.Tensor:  # [rows, 1], float32 as the logits
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        def index(rows: list[int]) -> torch.Tensor | None:
            return torch.tensor(rows, dtype=torch.long, device=device) if rows else None

        self.greedy = [i for i, p in enumerate(params) if p.greedy]
        self.sampled = [i for i, p in enumerate(params) if not p.greedy]
        # Repetition penalty: one gather/scatter over every penalized row's seen tokens.
        self.repeat = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        self.repeat_penalty = [params[i].repetition_penalty for i in self.repeat]
        biased = [i for i, p in enumerate(params) if p.logit_bias]
        self.biased = index(biased)
        self.bias = (
            torch.stack([samplers[i].bias(vocab, device) for i in biased]) if biased else None
        )
        penalized = [i for i, s in enumerate(samplers) if s.penalized]
        for i in penalized:
            samplers[i].vocab_counts(vocab, device)
        self.penalized = index(penalized)
        self.frequency = column([params[i].frequency_penalty for i in penalized])
        self.presence = column([params[i].presence_penalty for i in penalized])
        tempered = [p.tempered for p in params]
        self.tempered = torch.tensor(tempered, device=device)[:, None] if any(tempered) else None
        self.temperature = column([p.temperature if p.tempered else 1.0 for p in params])
        truncated = [i for i, p in enumerate(params) if p.truncated]
        self.truncated = index(truncated)
        self.all_truncated = len(truncated) == len(params)
        # Keep the k largest (0: keep all, i.e. k = vocab); HF never keeps fewer than 1.
        top_k = [
            min(max(params[i].top_k, 1), vocab) if params[i].top_k else vocab for i in truncated
        ]
        self.kth = index([vocab - k for k in top_k])
        self.any_top_k = any(params[i].top_k > 0 for i in truncated)
        # HF compares with 1 - top_p as a float32; rows without top-p remove nothing.
        self.any_top_p = any(params[i].top_p < 1.0 for i in truncated)
        below = [1 - params[i].top_p if params[i].top_p < 1.0 else float("-inf") for i in truncated]
        self.top_p_floor = column(below)
        self.logprobs = [i for i, p in enumerate(params) if p.logprobs]
        self.top_logprobs = [i for i, p in enumerate(params) if p.logprobs and p.top_logprobs]


def _penalize_repetition(scores: torch.Tensor, rows: _Rows, samplers) -> torch.Tensor:
    """transformers' CTRL rule over each penalized row's prompt and output, in place:
    a seen token's logit is divided by the penalty when positive, multiplied when negative."""
    vocab, device = scores.shape[-1], scores.device
    seen = [samplers[i].seen for i in rows.repeat]
    lengths = torch.tensor([len(s) for s in seen], device=device)
    ids = torch.cat(seen)
    offsets = (torch.tensor(rows.repeat, device=device) * vocab).repeat_interleave(lengths)
    penalty = torch.tensor(rows.repeat_penalty, device=device).repeat_interleave(lengths)
    # Ids past the logits' vocabulary (a larger embedding) cannot be generated: HF skips them.
    inside = ids < vocab
    flat, penalty = (ids + offsets)[inside], penalty[inside]
    values = scores.view(-1).gather(0, flat)
    values = torch.where(values < 0, values * penalty, values / penalty)
    scores.view(-1).scatter_(0, flat, values)  # a token seen twice gets the same value twice
    return scores


def _add_rows(scores: torch.Tensor, rows: torch.Tensor, values, fresh: bool) -> torch.Tensor:
    """`scores[rows] += values`, in place when `scores` is already a private copy."""
    if len(rows) == scores.shape[0]:
        return scores.add_(values) if fresh else scores + values
    if not fresh:
        scores = scores.clone()
    return scores.index_copy_(0, rows, scores.index_select(0, rows) + values)


def _cutoffs(scores: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """The smallest logit each row keeps after top-k, then top-p: [rows, 1] (-inf: keeps all).

    What TopKLogitsWarper then TopPLogitsWarper remove is a prefix of the ascending
    order, so one sort of the values (no indices) serves both, and a threshold puts
    it back in vocabulary order instead of a scatter. The softmax and cumulative sum
    run on the same sorted, top-k-filtered values as TopPLogitsWarper's, so the cut
    falls in the same place; only tokens tied with the last kept one are all kept.
    """
    subset = scores if rows.all_truncated else scores[rows.truncated]
    ordered = _sorted(subset)
    # Top-k keeps what is not below the k-th largest value (k = vocab: everything).
    cutoff = ordered.gather(1, rows.kth[:, None])
    if rows.any_top_p:
        kept = ordered.masked_fill(ordered < cutoff, float("-inf")) if rows.any_top_k else ordered
        cumulative = kept.softmax(dim=-1).cumsum(dim=-1)
        # Cumulative probabilities only grow: the removed tokens are the first `removed`.
        removed = (cumulative <= rows.top_p_floor).sum(dim=-1, keepdim=True)
        removed = removed.clamp_max(ordered.shape[-1] - 1)  # keep at least one token
        cutoff = torch.maximum(cutoff, ordered.gather(1, removed))
    if rows.all_truncated:
        return cutoff
    every = torch.full((scores.shape[0], 1), float("-inf"), device=scores.device)
    return every.index_copy_(0, rows.truncated, cutoff)


def _sorted(scores: torch.Tensor) -> torch.Tensor:
    """Each row's values in ascending order: [rows, vocab]."""
    if scores.device.type == "cpu":
        # NumPy's vectorized sort is several times faster than torch.sort on CPU,
        # and one thread is enough: no waiting for a busy core.
        return torch.from_numpy(np.sort(scores.numpy(), axis=-1))
    return torch.sort(scores, dim=-1).values


def _logprobs(scores: torch.Tensor, rows: _Rows, samplers) -> tuple[torch.Tensor, dict]:
    """Log-probabilities (after the penalties and temperature, before top-k/top-p) of the
    rows that asked: [asked rows, vocab]; and alternatives of the rows that asked for them."""
    asked = rows.logprobs
    logprobs = scores if len(asked) == len(samplers) else scores[asked]
    logprobs = logprobs.log_softmax(dim=-1)
    tops: dict[int, tuple[tuple[int, float], ...]] = {}
    if rows.top_logprobs:
        where = {i: j for j, i in enumerate(asked)}
        k = min(max(samplers[i].params.top_logprobs for i in rows.top_logprobs), scores.shape[-1])
        values, ids = logprobs[[where[i] for i in rows.top_logprobs]].topk(k)
        for i, row_values, row_ids in zip(
            rows.top_logprobs, values.tolist(), ids.tolist(), strict=True
        ):
            n = samplers[i].params.top_logprobs
            tops[i] = tuple(zip(row_ids[:n], row_values[:n], strict=True))
    return logprobs, tops


def _choice(token_id: int, logprobs: torch.Tensor, top_logprobs: int) -> Choice:
    # The distribution after the penalties and temperature, before top-k/top-p.
    top: tuple[tuple[int, float], ...] = ()
    if top_logprobs:
        # Never more alternatives than the vocabulary has (nano-sort has three).
        values, ids = logprobs.topk(min(top_logprobs, logprobs.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return Choice(token_id, float(logprobs[token_id]), top)


def _temper(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply the temperature so that no accepted temperature or penalty can make NaNs.

    A repetition penalty near 0 (or huge) pushes logits to ±inf; they are clamped to the
    largest finite float, which keeps their order. The row's maximum is subtracted before
    dividing, so a temperature near 0 cannot overflow: the likeliest token then gets
    probability 1, as with greedy decoding. NaN logits from the model itself stay NaN,
    so a broken model fails loudly instead of sampling garbage.
    """
    largest = torch.finfo(scores.dtype).max
    scores = scores.nan_to_num(nan=float("nan"), posinf=largest, neginf=-largest)
    if not params.tempered:
        return scores
    return (scores - scores.amax(dim=-1, keepdim=True)) / params.temperature
