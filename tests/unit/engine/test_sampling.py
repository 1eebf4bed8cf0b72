"""One request's sampling on fixed logits: the OpenAI penalties and logit bias against
their formulas, temperature edge cases, NaN/inf, and logprobs before truncation.

(tests/unit/engine/test_sampling_oracle.py checks the rest against transformers' processors.)"""

from __future__ import annotations

import pytest
import torch

from app.engine.sampling import BatchSampler, Sampler, SamplingParams, choose_alone

LOGITS = torch.tensor([2.0, 1.9, 1.0, -1.0, 0.5])


def _sampler(**params) -> Sampler:
    defaults = dict(temperature=0.0, logprobs=True, max_new_tokens=8)
    return Sampler(SamplingParams(**{**defaults, **params}), [3, 3, 3], torch.device("cpu"))


def test_presence_and_frequency_penalties_follow_openais_formula():
    sampler = _sampler(presence_penalty=0.5, frequency_penalty=0.3)
    counts = torch.zeros(5)
    for _ in range(6):
        choice = choose_alone(LOGITS, sampler)
        expected = LOGITS - counts * 0.3 - (counts > 0).float() * 0.5
        assert choice.token_id == int(expected.argmax())
        assert choice.logprob == pytest.approx(expected.log_softmax(-1)[choice.token_id].item())
        counts[choice.token_id] += 1
    # Token 0 leads by 0.1: the penalties hand the lead to token 1 after one step.
    assert counts[0] > 0 and counts[1] > 0


def test_the_prompt_does_not_count_toward_the_penalties():
    # The prompt is [3, 3, 3]; OpenAI's counts are of generated tokens only.
    first = choose_alone(LOGITS, _sampler(presence_penalty=2.0, frequency_penalty=2.0))
    assert first.logprob == pytest.approx(LOGITS.log_softmax(-1)[0].item())


def test_negative_penalties_encourage_repetition():
    sampler = _sampler(presence_penalty=-1.0)
    assert [choose_alone(LOGITS, sampler).token_id for _ in range(4)] == [0, 0, 0, 0]


def test_logit_bias_is_added_to_the_logits():
    sampler = _sampler(logit_bias=((3, 5.0), (0, -100.0)))
    choice = choose_alone(LOGITS, sampler)
    biased = LOGITS + torch.tensor([-100.0, 0, 0, 5.0, 0])
    assert choice.token_id == 3
    assert choice.logprob == pytest.approx(biased.log_softmax(-1)[3].item())


def test_no_penalty_no_bias_leaves_the_distribution_alone():
    choice = choose_alone(LOGITS, _sampler(top_logprobs=2))
    assert choice.token_id == 0
    assert [i for i, _ in choice.top] == [0, 1]
    assert choice.logprob == pytest.approx(LOGITS.log_softmax(-1)[0].item())


@pytest.mark.parametrize("temperature", [1e-6, 1e-30, 1e-38])
def test_a_tiny_temperature_acts_as_greedy_and_cannot_overflow(temperature):
    # Without subtracting the maximum first, 1e3 / 1e-38 overflows to inf and the
    # probabilities become NaN.
    logits = LOGITS * 500
    sampler = _sampler(temperature=temperature, top_p=0.9, seed=1)
    for _ in range(5):
        choice = choose_alone(logits, sampler)
        assert choice.token_id == 0
        assert choice.logprob == 0.0


def test_infinite_logits_are_clamped_and_keep_their_order():
    logits = torch.tensor([float("-inf"), 1.0, float("inf"), 0.0, float("-inf")])
    assert choose_alone(logits, _sampler()).token_id == 2
    sampled = choose_alone(logits, _sampler(temperature=0.7, seed=2))
    assert sampled.token_id == 2 and sampled.logprob == 0.0
    # A penalty near 0 divides a seen positive logit past the largest float: still finite.
    penalized = _sampler(temperature=0.9, repetition_penalty=1e-38, seed=3)
    choice = choose_alone(torch.tensor([2.0, 1.0, 0.0, 5.0, 0.5]), penalized)  # 3 was seen
    assert choice.token_id == 3 and choice.logprob == 0.0


@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_nan_logits_fail_the_draw_sampled_or_greedy(temperature):
    """Greedy too: argmax takes NaN for the largest, and would return its id as a choice."""
    logits = torch.tensor([1.0, float("nan"), 0.0, 0.5, 0.2])
    with pytest.raises(RuntimeError, match="not a distribution"):
        choose_alone(logits, _sampler(temperature=temperature, seed=4))


def test_a_greedy_row_of_nan_fails_alone_in_its_batch():
    logits = torch.tensor([[1.0, 3.0, 0.0], [float("nan")] * 3, [0.5, 0.1, 2.0]])
    choices = BatchSampler().choose(logits, [_sampler(temperature=0.0) for _ in range(3)])
    assert [c.token_id for c in (choices[0], choices[2])] == [1, 2]
    assert isinstance(choices[1], RuntimeError) and "not a distribution" in str(choices[1])


def test_logprobs_are_of_the_distribution_before_top_k_and_top_p():
    tempered = (LOGITS - LOGITS.max()) / 0.5
    sampler = _sampler(temperature=0.5, top_k=1, top_p=0.1, seed=5, top_logprobs=3)
    choice = choose_alone(LOGITS, sampler)
    assert choice.token_id == 0  # the only token top-k keeps
    assert choice.logprob == pytest.approx(tempered.log_softmax(-1)[0].item())
    assert choice.logprob < -0.1  # not log(1): the cut is not in the logprobs
    assert [i for i, _ in choice.top] == [0, 1, 2]


def test_never_more_alternatives_than_the_vocabulary():
    choice = choose_alone(LOGITS, _sampler(top_logprobs=20))
    assert [i for i, _ in choice.top] == [0, 1, 2, 4, 3]


def test_the_repetition_penalty_reads_the_prompt_and_the_output():
    # The prompt is [3, 3, 3]: token 3's positive logit is divided, a negative one multiplied.
    logits = torch.tensor([2.0, 1.9, 1.0, 2.2, -1.0])
    sampler = _sampler(repetition_penalty=2.0)
    first = choose_alone(logits, sampler)
    assert first.token_id == 0  # 3 fell to 1.1
    second = choose_alone(logits, sampler)
    assert second.token_id == 1  # now 0 fell to 1.0 as well
    expected = torch.tensor([1.0, 1.9, 1.0, 1.1, -1.0]).log_softmax(-1)[1].item()
    assert second.logprob == pytest.approx(expected)
