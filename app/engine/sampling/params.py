"""What a request asks of the sampler, and what the sampler answers for one step."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def penalized(self) -> bool:
        """Whether OpenAI's presence or frequency penalty changes the logits."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class Choice:
    """A chosen token and, when asked for, its log-probability and the likeliest alternatives.

    `logprob` and `top`'s values are natural logarithms of probabilities after the
    penalties, bias and temperature, before top-k/top-p; `top` is (token id, logprob)
    pairs, likeliest first.
    """

    token_id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()
