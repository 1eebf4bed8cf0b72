"""One request's sampling state: what its penalties remember and its random generator.

The computation itself is `BatchSampler`'s (app/engine/sampling/batch.py), for a batch
of any number of rows: a request choosing alone is a one-row batch.
"""

from __future__ import annotations

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
            self.generator.manual_seed(params.seed)

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
