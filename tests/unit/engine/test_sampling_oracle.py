"""The one sampling algorithm against transformers' logits processors, the oracle.

For each parameter set of a grid, a request's tokens and logprobs over many steps are
what HF's RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper (plus the OpenAI penalties and logit bias by their formulas, and the same
inverse-CDF draw with the same generator) give: chosen alone (a one-row batch), and as one
row of a batch of every other parameter set, where it chooses exactly what it does alone.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from app.engine.sampling import BatchSampler, Choice, Sampler, SamplingParams, choose_alone, draw

CPU = torch.device("cpu")
VOCAB = 300
STEPS = 24

GRID = {
    "greedy": SamplingParams(temperature=0),
    "greedy-logprobs": SamplingParams(temperature=0, logprobs=True, top_logprobs=5),
    "t1": SamplingParams(temperature=1.0, top_p=1.0, seed=1, logprobs=True),
    "t0.5": SamplingParams(temperature=0.5, top_p=1.0, seed=2, logprobs=True),
    "t1.7": SamplingParams(temperature=1.7, top_p=1.0, seed=3, logprobs=True, top_logprobs=3),
    "t1e-6": SamplingParams(temperature=1e-6, top_p=0.5, seed=4, logprobs=True),
    "top-k1": SamplingParams(temperature=0.8, top_k=1, top_p=1.0, seed=5, logprobs=True),
    "top-k5": SamplingParams(temperature=1.2, top_k=5, top_p=1.0, seed=6, logprobs=True),
    "top-k-past-vocab": SamplingParams(temperature=1.0, top_k=VOCAB + 7, top_p=1.0, seed=7),
    "top-p0.1": SamplingParams(temperature=1.0, top_p=0.1, seed=8),
    "top-p0.5": SamplingParams(temperature=1.5, top_p=0.5, seed=9, logprobs=True),
    "top-p0.9": SamplingParams(temperature=0.7, top_p=0.9, seed=10),
    "top-p0.999": SamplingParams(temperature=2.0, top_p=0.999, seed=11),
    "top-k5-top-p0.5": SamplingParams(temperature=1.5, top_k=5, top_p=0.5, seed=12),
    "top-k40-top-p0.8": SamplingParams(temperature=1.3, top_k=40, top_p=0.8, seed=13),
    "repetition1.3": SamplingParams(
        temperature=0.8, repetition_penalty=1.3, seed=14, logprobs=True
    ),
    "repetition0.7": SamplingParams(temperature=1.0, repetition_penalty=0.7, top_k=20, seed=15),
    "repetition-greedy": SamplingParams(temperature=0, repetition_penalty=2.0, logprobs=True),
    "repetition1e-9": SamplingParams(temperature=0.7, repetition_penalty=1e-9, top_p=0.9, seed=16),
    "repetition1e9": SamplingParams(temperature=0.7, repetition_penalty=1e9, seed=17),
    "penalties": SamplingParams(
        temperature=0.6, presence_penalty=0.7, frequency_penalty=0.4, seed=18, logprobs=True
    ),
    "negative-penalties": SamplingParams(temperature=1.1, presence_penalty=-1.5, seed=19),
    "penalties-greedy": SamplingParams(temperature=0, frequency_penalty=1.5, logprobs=True),
    "bias": SamplingParams(temperature=0.7, logit_bias=((7, 4.0), (11, -100.0)), seed=20),
    "bias-greedy": SamplingParams(temperature=0, logit_bias=((3, 30.0),), logprobs=True),
    "everything": SamplingParams(
        temperature=0.9,
        top_k=30,
        top_p=0.85,
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        logit_bias=((2, 1.5),),
        seed=21,
        logprobs=True,
        top_logprobs=4,
    ),
    "unseeded": SamplingParams(temperature=0.9, top_p=0.95),
}


class _Oracle:
    """One request sampled with HF's processors: its own seen tokens, counts and generator."""

    def __init__(self, params: SamplingParams, prompt: list[int], generator: torch.Generator):
        self.params = params
        self.seen = list(prompt)
        self.counts = torch.zeros(VOCAB)
        self.generator = generator

    def choose(self, logits: torch.Tensor) -> Choice:
        p = self.params
        scores = logits.float()[None].clone()  # [1, vocab]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor([self.seen], dtype=torch.long)
            scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(seen, scores)
        for token_id, bias in p.logit_bias:
            scores[0, token_id] += bias
        scores = scores - (
            self.counts * p.frequency_penalty + (self.counts > 0).float() * p.presence_penalty
        )
        largest = torch.finfo(torch.float32).max
        scores = scores.nan_to_num(nan=float("nan"), posinf=largest, neginf=-largest)
        if not p.greedy:
            # The server's own addition: the maximum is subtracted first (no overflow).
            shifted = scores - scores.amax(dim=-1, keepdim=True)
            scores = TemperatureLogitsWarper(p.temperature)(None, shifted)
        logprobs = scores[0].log_softmax(dim=-1)
        if p.greedy:
            token = int(scores.argmax())
        else:
            warped = scores
            if p.top_k > 0:
                warped = TopKLogitsWarper(p.top_k)(None, warped)
            if p.top_p < 1.0:
                warped = TopPLogitsWarper(p.top_p)(None, warped)
            (drawn,) = draw(warped.softmax(dim=-1), [self.generator])
            assert isinstance(drawn, int)
            token = drawn
        self.seen.append(token)
        self.counts[token] += 1
        if not p.logprobs:
            return Choice(token)
        top: tuple[tuple[int, float], ...] = ()
        if p.top_logprobs:
            values, ids = logprobs.topk(p.top_logprobs)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return Choice(token, float(logprobs[token]), top)


def _requests(params: SamplingParams, prompt: list[int]) -> tuple[Sampler, Sampler, _Oracle]:
    """Two samplers (to choose alone and batched) and an oracle, on the same random stream."""
    params = SamplingParams(**{**params.__dict__, "max_new_tokens": STEPS})
    alone, batched = Sampler(params, prompt, CPU), Sampler(params, prompt, CPU)
    batched.generator.set_state(alone.generator.get_state())  # the same stream, even unseeded
    oracle_generator = torch.Generator().manual_seed(0)
    oracle_generator.set_state(alone.generator.get_state())
    return alone, batched, _Oracle(params, prompt, oracle_generator)


def _logits(rows: int, step: int, generator: torch.Generator) -> torch.Tensor:
    """Peaked logits like a real model's, flatter every third step; a few -inf (banned)."""
    scale = 1.0 if step % 3 == 2 else 4.0
    logits = torch.randn((rows, VOCAB), generator=generator) * scale
    logits[:, VOCAB - 3 :] = float("-inf")
    return logits


def _prompt(seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(seed)).tolist()


def _assert_matches(got: Choice, want: Choice) -> None:
    assert got.token_id == want.token_id
    if want.logprob is None:
        assert got.logprob is None
    else:
        assert got.logprob == pytest.approx(want.logprob, abs=1e-5)
    assert [i for i, _ in got.top] == [i for i, _ in want.top]
    assert [v for _, v in got.top] == pytest.approx([v for _, v in want.top], abs=1e-5)


@pytest.mark.parametrize("name", list(GRID))
def test_one_row_chooses_what_hfs_processors_choose(name):
    alone, _, oracle = _requests(GRID[name], _prompt(1))
    noise = torch.Generator().manual_seed(2)
    tokens = []
    for step in range(STEPS):
        logits = _logits(1, step, noise)[0]
        choice = choose_alone(logits, alone)
        _assert_matches(choice, oracle.choose(logits))
        tokens.append(choice.token_id)
    assert all(t < VOCAB - 3 for t in tokens)  # never a banned (-inf) token


def test_every_row_of_a_mixed_batch_chooses_what_it_chooses_alone_and_what_hf_chooses():
    requests = [_requests(params, _prompt(i)) for i, params in enumerate(GRID.values())]
    batch = BatchSampler()
    noise = torch.Generator().manual_seed(3)
    for step in range(STEPS):
        logits = _logits(len(requests), step, noise)
        choices = batch.choose(logits, [batched for _, batched, _ in requests])
        for row, (alone, _, oracle) in enumerate(requests):
            choice = choices[row]
            assert isinstance(choice, Choice)
            assert choice == choose_alone(logits[row], alone)  # identical, not just close
            _assert_matches(choice, oracle.choose(logits[row]))


def test_the_grid_samples_different_tokens_than_greedy():
    # A guard on the test itself: the sampled rows really draw (not everything is argmax).
    alone, _, _ = _requests(GRID["t1"], _prompt(4))
    noise = torch.Generator().manual_seed(4)
    logits = [_logits(1, 2, noise)[0] for _ in range(STEPS)]
    drawn = [choose_alone(row, alone).token_id for row in logits]
    assert drawn != [int(row.argmax()) for row in logits]


def test_prompt_ids_past_the_logits_vocabulary_are_skipped_as_hf_skips_them():
    # An embedding larger than the output vocabulary: the prompt holds ids the logits lack.
    params = SamplingParams(temperature=0.8, repetition_penalty=1.5, seed=5, logprobs=True)
    alone, _, oracle = _requests(params, [3, VOCAB + 5, 8, VOCAB])
    noise = torch.Generator().manual_seed(5)
    for step in range(STEPS):
        logits = _logits(1, step, noise)[0]
        _assert_matches(choose_alone(logits, alone), oracle.choose(logits))


def test_top_p_compares_with_1_minus_top_p_as_a_float32():
    # Probabilities 0.3 and 0.7 as float32: 0.3 is float32(1 - 0.7) exactly but above the
    # float64 1 - 0.7, so HF's float32 comparison removes token 0 (and a float64 one keeps it).
    logits = torch.tensor([math.log(3), math.log(7)])
    assert logits.softmax(-1)[0] == torch.tensor(1 - 0.7, dtype=torch.float32)
    warped = TopPLogitsWarper(0.7)(None, logits[None])
    assert warped[0, 0] == float("-inf")
    for seed in range(20):
        params = SamplingParams(temperature=1.0, top_p=0.7, seed=seed, max_new_tokens=1)
        assert choose_alone(logits, Sampler(params, [], CPU)).token_id == 1


def test_a_tiny_top_p_keeps_the_likeliest_token_as_hf_does():
    # 1 - 1e-9 rounds to 1.0 as a float32: every cumulative probability is below it, and
    # only HF's rule of keeping at least one token leaves something to draw.
    alone, _, oracle = _requests(SamplingParams(temperature=1.0, top_p=1e-9, seed=6), [])
    noise = torch.Generator().manual_seed(6)
    for step in range(STEPS):
        logits = _logits(1, step, noise)[0]
        choice = choose_alone(logits, alone)
        _assert_matches(choice, oracle.choose(logits))
        assert choice.token_id == int(logits.argmax())
