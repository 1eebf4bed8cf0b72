"""Faults of issue 23 on the sampler itself: seeds narrowed to fewer bits than the API
accepts, and float parameters outside float32's range.

(The same faults through the endpoints: tests/unit/web/test_param_faults.py.)
"""

from __future__ import annotations

import pytest
import torch

from app.engine.sampling import Sampler, SamplingParams, choose_alone

CPU = torch.device("cpu")


def _stream(seed: int, device: torch.device = CPU, n: int = 8) -> list[float]:
    generator = Sampler(SamplingParams(seed=seed), [1], device).generator
    return torch.rand(n, generator=generator, dtype=torch.float64, device=device).tolist()


def test_torch_s_cpu_generator_keeps_only_a_seed_s_low_32_bits():
    """What numpy PR #4676's kind looks like in torch 2: manual_seed takes any seed below
    2**64 but seeds its Mersenne Twister with the low 32 bits only. (If this stops holding,
    app/engine/sampling/state.py's workaround is no longer needed.)"""
    streams = []
    for seed in (7, 7 + 2**32):
        generator = torch.Generator().manual_seed(seed)
        streams.append(torch.rand(4, generator=generator).tolist())
    assert streams[0] == streams[1]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_seeds_equal_in_their_low_32_bits_draw_different_streams(device):
    """numpy PR #4676: a seed must not be narrowed to fewer bits than the API accepts
    (2**53 on /generate, 2**64 on /v1); 7, 7 + 2**32 and 7 + 5 * 2**32 drew one stream."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    seeds = [7, 7 + 2**32, 7 + 5 * 2**32, 2**32, 2**53, 2**63 + 7, 2**64 - 1]
    streams = [tuple(_stream(seed, torch.device(device))) for seed in seeds]
    assert len(set(streams)) == len(seeds)
    assert [tuple(_stream(seed, torch.device(device))) for seed in seeds] == streams


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**31, 2**32 - 1])
def test_a_seed_below_2_to_the_32_keeps_torch_s_own_stream(seed):
    """Seeds that fit in 32 bits draw exactly what manual_seed(seed) draws, as before."""
    expected = torch.rand(8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert _stream(seed) == expected.tolist()


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_seed_outside_64_bits_is_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        Sampler(SamplingParams(seed=seed), [1], CPU)


def _sampler(**params) -> Sampler:
    defaults = dict(logprobs=True, max_new_tokens=8, top_p=1.0)
    return Sampler(SamplingParams(**{**defaults, **params}), [3, 3, 3], CPU)


@pytest.mark.parametrize("temperature", [1e-46, 1e-300, 5e-324])
def test_a_temperature_that_is_0_in_float32_is_the_limit_not_nan(temperature):
    """Round 1's F1 below float32's range: the temperature column held 0.0 and 0 / 0 made
    the probabilities NaN. The limit of a temperature going to 0: the likeliest tokens
    share all the probability (one of them: logprob 0)."""
    logits = torch.tensor([2.0, 1.9, 1.0, -1.0, 0.5])
    for seed in range(4):
        choice = choose_alone(logits, _sampler(temperature=temperature, seed=seed))
        assert choice.token_id == 0 and choice.logprob == 0.0
    tied = torch.tensor([2.0, 1.9, 2.0, -1.0, 0.5])
    chosen = {choose_alone(tied, _sampler(temperature=1e-300, seed=s)).token_id for s in range(32)}
    assert chosen == {0, 2}
    alone = choose_alone(tied, _sampler(temperature=1e-300, seed=1))
    assert alone.logprob == pytest.approx(-0.6931, abs=1e-4)  # log(1/2)


def test_a_temperature_in_a_batch_with_others_that_is_0_in_float32():
    """The same limit for one row of a batch; the other rows keep their temperature."""
    from app.engine.sampling import BatchSampler

    logits = torch.tensor([[2.0, 1.9, 1.0], [2.0, 1.9, 1.0]])
    tiny, warm = _sampler(temperature=1e-300, seed=1), _sampler(temperature=0.5, seed=2)
    first, second = BatchSampler().choose(logits, [tiny, warm])
    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    assert first.logprob == 0.0
    assert second.logprob == pytest.approx(logits[1].div(0.5).log_softmax(-1)[second.token_id])


def test_a_temperature_that_is_inf_in_float32_never_makes_nan():
    """Round 1's F1 above float32's range: 1e300 is inf in float32, and the shifted logits
    of a model's ±inf (clamped to ±the largest float) overflow to -inf: -inf / inf is NaN."""
    logits = torch.tensor([float("inf"), float("-inf"), 0.0, 1.0])
    for seed in range(4):
        choice = choose_alone(logits, _sampler(temperature=1e300, seed=seed))
        assert choice.token_id in (0, 2, 3) and choice.logprob is not None


@pytest.mark.parametrize("penalty", [1e-46, 1e-300, 5e-324])
def test_a_repetition_penalty_that_is_0_in_float32_never_makes_nan(penalty):
    """Round 1's F1 below float32's range: the penalty column held 0.0, and a seen token
    whose logit is exactly 0 became 0 / 0 = NaN. Its limit is 0 (0 / p for any p > 0)."""
    logits = torch.tensor([1.0, 0.5, 0.25, 0.0, -1.0])  # token 3 was seen and has logit 0
    choice = choose_alone(logits, _sampler(temperature=1.0, repetition_penalty=penalty, seed=0))
    assert choice.logprob is not None
    greedy = choose_alone(logits, _sampler(temperature=0.0, repetition_penalty=penalty))
    assert greedy.token_id == 0
    assert greedy.logprob == pytest.approx(logits.log_softmax(-1)[0].item())
