"""Choosing the next token from logits, one request at a time, reproducibly."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Choice:
    """A chosen token and, when asked for, its log-probability and the likeliest alternatives."""

    token_id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


class Sampler:
    """Applies one request's processors and draws from its own random generator.

    A private generator per request keeps a seeded result independent of
    whatever else the server is generating at the same time.
    """

    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device) -> None:
        self._params = params
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
        self._penalize = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self._counts: torch.Tensor | None = None  # [vocab], made at the first step
        self._bias: torch.Tensor | None = None  # [vocab], made at the first step
        self._truncate = LogitsProcessorList()
        if params.top_k > 0:
            self._truncate.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self._truncate.append(TopPLogitsWarper(params.top_p))
        self._generator = torch.Generator(device=device)
        if params.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(params.seed)

    def choose(self, logits: torch.Tensor) -> Choice:
        """Pick the next token from a 1-D row of logits and remember it."""
        seen = self._seen[:, : self._length]
        scores = self._shape(seen, logits.float().unsqueeze(0))
        if self._params.logit_bias:
            scores = scores + self._biases(scores)
        if self._penalize:
            scores = self._penalized(scores)
        scores = _temper(scores, self._params)
        if self._params.greedy:
            token = scores.argmax(dim=-1)
        else:
            probs = self._truncate(seen, scores).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=self._generator)[:, 0]
        if self._track:
            self._seen[0, self._length] = token[0]
            self._length += 1
        if self._counts is not None:
            self._counts[token[0]] += 1
        if not self._params.logprobs:
            return Choice(int(token.item()))
        return self._with_logprobs(scores[0], int(token.item()))

    def _biases(self, scores: torch.Tensor) -> torch.Tensor:
        if self._bias is None:
            self._bias = torch.zeros(scores.shape[-1], dtype=torch.float32, device=scores.device)
            ids, values = zip(*self._params.logit_bias, strict=True)
            self._bias[list(ids)] = torch.tensor(values, device=scores.device)
        return self._bias

    def _penalized(self, scores: torch.Tensor) -> torch.Tensor:
        """Presence and frequency penalties, as the OpenAI API defines them:
        `logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty`."""
        if self._counts is None:
            self._counts = torch.zeros(scores.shape[-1], dtype=torch.float32, device=scores.device)
        penalty = self._counts * self._params.frequency_penalty
        penalty += (self._counts > 0).float() * self._params.presence_penalty
        return scores - penalty

    def _with_logprobs(self, scores: torch.Tensor, token_id: int) -> Choice:
        # The distribution after the penalties and temperature, before top-k/top-p.
        logprobs = scores.log_softmax(dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if self._params.top_logprobs:
            # Never more alternatives than the vocabulary has (nano-sort has three).
            values, ids = logprobs.topk(min(self._params.top_logprobs, logprobs.shape[-1]))
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
    if params.greedy or params.temperature == 1.0:
        return scores
    return (scores - scores.amax(dim=-1, keepdim=True)) / params.temperature
