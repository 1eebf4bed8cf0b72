"""The sampler's OpenAI penalties and logit bias, against their formulas on fixed logits."""

from __future__ import annotations

import pytest
import torch

from app.engine.sampling import Sampler, SamplingParams

LOGITS = torch.tensor([2.0, 1.9, 1.0, -1.0, 0.5])


def _sampler(**params) -> Sampler:
    defaults = dict(temperature=0.0, logprobs=True, max_new_tokens=8)
    return Sampler(SamplingParams(**{**defaults, **params}), [3, 3, 3], torch.device("cpu"))


def test_presence_and_frequency_penalties_follow_openais_formula():
    sampler = _sampler(presence_penalty=0.5, frequency_penalty=0.3)
    counts = torch.zeros(5)
    for _ in range(6):
        choice = sampler.choose(LOGITS)
        expected = LOGITS - counts * 0.3 - (counts > 0).float() * 0.5
        assert choice.token_id == int(expected.argmax())
        assert choice.logprob == pytest.approx(expected.log_softmax(-1)[choice.token_id].item())
        counts[choice.token_id] += 1
    # Token 0 leads by 0.1: the penalties hand the lead to token 1 after one step.
    assert counts[0] > 0 and counts[1] > 0


def test_the_prompt_does_not_count_toward_the_penalties():
    # The prompt is [3, 3, 3]; OpenAI's counts are of generated tokens only.
    first = _sampler(presence_penalty=2.0, frequency_penalty=2.0).choose(LOGITS)
    assert first.logprob == pytest.approx(LOGITS.log_softmax(-1)[0].item())


def test_negative_penalties_encourage_repetition():
    sampler = _sampler(presence_penalty=-1.0)
    assert [sampler.choose(LOGITS).token_id for _ in range(4)] == [0, 0, 0, 0]


def test_logit_bias_is_added_to_the_logits():
    sampler = _sampler(logit_bias=((3, 5.0), (0, -100.0)))
    choice = sampler.choose(LOGITS)
    biased = LOGITS + torch.tensor([-100.0, 0, 0, 5.0, 0])
    assert choice.token_id == 3
    assert choice.logprob == pytest.approx(biased.log_softmax(-1)[3].item())


def test_no_penalty_no_bias_leaves_the_distribution_alone():
    choice = _sampler(top_logprobs=2).choose(LOGITS)
    assert choice.token_id == 0
    assert [i for i, _ in choice.top] == [0, 1]
    assert choice.logprob == pytest.approx(LOGITS.log_softmax(-1)[0].item())
