"""One request's sampling state: what its penalties remember and its random generator.

The computation itself is `BatchSampler`'s (app/engine/sampling/batch.py), for a batch
of any number of rows: a request choosing alone is a one-row batch.
"""

from __future__ import annotations

import numpy as np
import torch

from app.engine.sampling.params import SamplingParams


class Sampler:
    """One request's sampling state, read and updated by `BatchSampler.choose`.

    A private generator per request keeps a seeded result independent of whatever else
    the server is generating at the same time. The dense [vocab] tensors (penalty counts,
    logit bias) are made at the first step, when the logits tell the vocabulary's size.
    """

    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device) -> None:
        self.params = params
        # Only the repetition penalty reads the tokens seen so far: keep them only for it.
        self._track = params.repetition_penalty != 1.0
        capacity = len(prompt_ids) + params.max_new_tokens if self._track else 0
        self._seen = torch.zeros(capacity, dtype=torch.long, device=device)
        if self._track:
            self._seen[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        self._length = len(prompt_ids) if self._track else 0
        # OpenAI's penalties count generated tokens only (not the prompt's): one count each.
        self.counts: torch.Tensor | None = None  # [vocab] float32, made at the first step
        self._bias: torch.Tensor | None = None  # [vocab] float32, made at the first step
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            seed_generator(self.generator, params.seed)

    @property
    def seen(self) -> torch.Tensor:
        """Prompt and generated token ids, for the repetition penalty: [length] (empty
        without a repetition penalty)."""
        return self._seen[: self._length]

    def record(self, token_id: int) -> None:
        """Remember a chosen token for the penalties."""
        if self._track:
            self._seen[self._length] = token_id
            self._length += 1
        if self.counts is not None:
            self.counts[token_id] += 1

    def bias(self, vocab: int, device: torch.device) -> torch.Tensor:
        """The logit bias as a dense row: [vocab] float32, added to the logits."""
        if self._bias is None:
            self._bias = torch.zeros(vocab, dtype=torch.float32, device=device)
            if self.params.logit_bias:
                ids, values = zip(*self.params.logit_bias, strict=True)
                self._bias[list(ids)] = torch.tensor(values, device=device)
        return self._bias

    def vocab_counts(self, vocab: int, device: torch.device) -> torch.Tensor:
        """How many times each token was generated: [vocab] float32 (the penalties read
        it; `record` updates it in place)."""
        if self.counts is None:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        return self.counts


# torch's CPU generator state (`get_state()`, 5056 bytes in torch 2): the seed (uint64),
# two int32 (left, seeded), `next` (uint64), then the Mersenne Twister's 624 32-bit words,
# each stored as a uint64; the cached normal samples follow.
_MT_WORDS_AT = 24
_MT_WORDS = 624
_MASK32 = 0xFFFF_FFFF


def seed_generator(generator: torch.Generator, seed: int) -> None:
    """Seed `generator` so that every seed in [0, 2**64) selects its own random stream.

    torch's CPU generator (a Mersenne Twister) keeps only a seed's low 32 bits: seeds 7
    and 7 + 2**32 would draw the same numbers (the fault numpy PR #4676 fixed in numpy).
    So the CPU generator is seeded as before, which fills the twister's 624 words from the
    low 32 bits, and then word i (for i >= 2) is XORed with `_mix32(high + i * 0x9E3779B9)`,
    `high` being the seed's high 32 bits. Word 1 is a bijection of the low 32 bits
    (MT19937's initialisation) and, for a given i, `_mix32(high + i * c)` is a bijection of
    `high`: words 1 and 2 alone tell every seed apart, and since the twister's step and
    output tempering are invertible, distinct states draw distinct streams. Touching
    every word makes the streams differ from the first draw on, not just at a few places.
    A seed below 2**32 is left as `manual_seed(seed)` made it: its stream is the same as
    before this scheme. The scheme is fixed here, so a seed's stream only changes if
    torch's generator does. On CUDA, `manual_seed` alone: torch's Philox generator there
    keeps the whole 64-bit seed as its key (CUDAGeneratorImpl); no GPU has run this check
    (tests/unit/engine/test_param_faults.py's cuda case skips without one).

    Raises:
        ValueError: a seed outside [0, 2**64).
        RuntimeError: torch's CPU state no longer has the layout above (a torch upgrade).
    """
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed {seed} is outside 0 to 2**64 - 1")
    generator.manual_seed(seed)
    high = seed >> 32
    if high == 0 or generator.device.type != "cpu":
        return
    state = generator.get_state().numpy().copy()
    words = state[_MT_WORDS_AT : _MT_WORDS_AT + 8 * _MT_WORDS].view("<u8")
    low = seed & _MASK32
    # MT19937's initialisation, checked before editing the words it wrote.
    if (words[0], words[1]) != (low, (1812433253 * (low ^ (low >> 30)) + 1) & _MASK32):
        raise RuntimeError("torch's CPU generator state has changed layout: cannot seed it")
    index = np.arange(2, _MT_WORDS, dtype=np.uint64)
    words[2:] ^= _mix32((np.uint64(high) + index * np.uint64(0x9E3779B9)) & np.uint64(_MASK32))
    generator.set_state(torch.from_numpy(state))


def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijection of 32-bit values (in uint64 arrays) that spreads every input bit over the
    output: MurmurHash3's finalizer (xor-shifts and multiplications by odd constants)."""
    mask = np.uint64(_MASK32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & mask
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & mask
    return x ^ (x >> np.uint64(16))
