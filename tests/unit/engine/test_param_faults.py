"""Faults of issue 23 on the sampler itself: seeds narrowed to fewer bits than the API
accepts, and float parameters outside float32's range.

(The same faults through the endpoints: tests/unit/web/test_param_faults.py.)
"""

from __future__ import annotations

import pytest
import torch

from app.engine.sampling import Sampler, SamplingParams

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
