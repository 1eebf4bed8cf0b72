"""Pacing prompt work beside running streams: how much prompt a round may take.

Arithmetic only, no torch: `PrefillPace` turns measured round times into a budget of
prompt work, `RoundRecord` is what one round did (what the pace learns from), and
`keys_per_token` reads a model's size to price a prompt token by its position. The
planner (app/engine/plan.py) spends the budget; the running group
(app/engine/running.py) times its rounds and reports them here.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

WHOLE = float(1 << 30)  # a budget for whole prompts: nothing decodes, so no one waits


class PrefillPace:
    """How much prompt to prefill in one round of running rows.

    Prompt work is counted in token-equivalents: a prompt token at position p costs
    1 + p / K, where K (`keys_per_token`) is the number of keys whose attention costs
    as much as the token's matrix products (see `keys_per_token`), so a chunk late in
    a long prompt counts for what it costs. At most `chunk` tokens a round, and a
    round no longer than `GAP_STEPS` rounds of the rows alone: the time a running
    stream waits for its next token, whatever the device (a step on a GPU costs as
    much as hundreds of prompt tokens, on a CPU as much as a few dozen).

    The budget is a round's target time over its cost per unit of work, the whole
    round's time over its work, as last measured. Part of a round costs the same
    whatever its work (the rows' step, and reading the weights once for all tokens),
    so that estimate is too high for a larger chunk and too low for a smaller one:
    budgets grow towards the work whose round takes the target time and never pass it
    (W' = W T*/T(W), with T(W) = c + wW and c >= 0, rises to T(W*) = T* from below).
    Rounds of one mixed pass and rounds of separate passes (the chunks', then the
    step) are measured apart, as their fixed parts differ. GAP_STEPS trades the
    running streams' largest gap against the joiner's first token.
    """

    GAP_STEPS = 2.5
    MIN_TOKENS = 16  # progress even when a step is cheap next to a prompt token
    PROBE_TOKENS = 32  # the first chunk beside running rows, before prompt work is measured

    def __init__(self, chunk: int, keys_per_token: float = math.inf) -> None:
        self.chunk = chunk
        self._keys = keys_per_token
        self._steps: deque[float] = deque(maxlen=9)  # recent rounds of the rows alone (s)
        self._round_s: dict[bool, float] = {}  # a round's seconds per unit of work, by mixed
        self._rounds: dict[bool, int] = {}  # rounds with prompt work measured, by mixed
        self._measured = 0.0  # the most prompt work measured in one round beside rows

    def work(self, start: int, tokens: int) -> float:
        """Token-equivalents of prompt tokens start..start+tokens-1."""
        return tokens * (1 + (start + tokens / 2) / self._keys)

    def padded_work(self, lengths: Sequence[int]) -> float:
        """Token-equivalents of prefilling prompts of these lengths together in one pass,
        left-padded to the longest."""
        return len(lengths) * self.work(0, max(lengths))

    def tokens(self, start: int, work: float) -> int:
        """How many prompt tokens from `start` on make `work` (at most `chunk`, at least 1)."""
        if math.isinf(self._keys):
            fit = work
        else:  # solve t * (1 + (start + t / 2) / K) = work for t
            b = 1 + start / self._keys
            fit = self._keys * (math.sqrt(b * b + 2 * work / self._keys) - b)
        return max(1, min(self.chunk, math.ceil(fit - 1e-6)))

    def budget(self, mixed: bool = True) -> float:
        """Prompt work (token-equivalents) for the next round (one mixed pass if `mixed`)."""
        cap = self.work(0, self.chunk)  # `chunk` tokens at the start of a prompt
        if self.step_seconds is None:
            return cap  # nothing decodes yet: no one to keep waiting
        per_work = self._round_s.get(mixed)
        if per_work is None:
            # Rows decode, but what a prompt token costs beside them is not known yet: a
            # small first chunk measures it. (A whole chunk first had cost the running rows
            # a gap of 4 steps, where steps are cheap next to prompt tokens.)
            return min(cap, self.work(0, self.PROBE_TOKENS))
        # At most twice what has been measured: one small round's time is noisy, and the
        # budget grows from it in a few rounds anyway.
        fit = min(cap, self.GAP_STEPS * self.step_seconds / per_work, 2 * self._measured)
        return max(float(min(self.MIN_TOKENS, self.chunk)), fit)

    def probing(self, mixed: bool = True) -> bool:
        """Whether the next budget is the probe: rows decode, and a round's cost per unit of
        prompt work beside them has not been measured yet."""
        return self.step_seconds is not None and mixed not in self._round_s

    @property
    def step_seconds(self) -> float | None:
        """A round of the rows alone (s): the median of recent ones, so that one slowed by
        something else on the machine (another process starting) does not size chunks."""
        return statistics.median(self._steps) if self._steps else None

    def stepped(self, seconds: float) -> None:
        """A round of the running rows, with no prompt work, took this long."""
        self._steps.append(seconds)

    def prefilled(
        self, work: float, seconds: float, mixed: bool = True, budget: float | None = None
    ) -> None:
        """A round of the running rows with this much prompt work (padding included) took
        this long; `mixed`: in one pass with the rows' step; `budget`: what sized it."""
        if self.step_seconds is None:
            return  # nothing to compare with (the budget is `chunk` till a step is measured)
        if budget is not None and not 0.8 * budget <= work <= 1.2 * budget:
            # A round its budget did not size (a short prompt that went in whole): its fixed
            # part weighs differently, and one 5-token round on a GPU-like device had cut
            # the next budget from 256 tokens to 24.
            return
        self._measured = max(self._measured, work)
        per_work = max(seconds, 1e-9) / max(work, 1.0)
        rounds = self._rounds[mixed] = self._rounds.get(mixed, 0) + 1
        # The probe's round is no sample to keep: its fixed part weighs most on few tokens,
        # and it also made the prompt's cache. Averaged in, it held the next rounds at three
        # quarters of the target.
        previous = self._round_s.get(mixed) if rounds > 2 else None
        self._round_s[mixed] = per_work if previous is None else 0.5 * (previous + per_work)


@dataclass
class RoundRecord:
    """What one round of a RunningGroup did, for its PrefillPace."""

    work: float = 0.0  # prompt work fed (PrefillPace units)
    budget: float | None = None  # the budget that sized it, where prompts waited
    step_s: float | None = None  # the rows' own pass, where it ran apart from the chunks
    clean: bool = True  # no part failed (a fallback's time is no sample)


@runtime_checkable
class SizedModel(Protocol):
    """What `keys_per_token` reads of a model (a transformers `PreTrainedModel` has it all)."""

    config: Any  # with `num_hidden_layers` and `hidden_size`

    def num_parameters(self, exclude_embeddings: bool = ...) -> int: ...

    def get_input_embeddings(self) -> Any: ...

    def get_output_embeddings(self) -> Any: ...


def _packed_weights(model: object) -> int:
    """Weights that modules hold outside their parameters, as they declare them in a
    `packed_weights` count (quantized layers: app/models/quantizing.py)."""
    modules = getattr(model, "modules", None)
    return sum(getattr(m, "packed_weights", 0) for m in modules()) if callable(modules) else 0


def keys_per_token(model: object) -> float:
    """Keys whose attention costs a query token as much as its matrix products (K).

    A prompt token's matrix products cost about 2 FLOPs per parameter of the layers
    (neither the embedding nor the LM head, which a prefill runs for the last token only);
    attending to one key costs 4 per layer and hidden unit (scores and weighted values,
    every query head). Infinite, so that positions cost nothing extra, for a model that
    does not say (no `SizedModel`, or a config without those sizes).
    """
    if not isinstance(model, SizedModel):
        return math.inf
    try:
        params = model.num_parameters(exclude_embeddings=True) + _packed_weights(model)
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        weight = getattr(head, "weight", None)  # a quantized head holds none (a packed copy)
        if weight is not None and weight is not getattr(embedding, "weight", None):
            params -= weight.numel()  # counted above unless tied to the embedding
        params -= getattr(head, "packed_weights", 0)
        config = model.config
        return params / (2 * config.num_hidden_layers * config.hidden_size)
    except (AttributeError, TypeError, ZeroDivisionError):
        return math.inf
