"""Shared pieces of the engine tests: solo decoding as a reference, and worker cleanup."""

from __future__ import annotations

import pytest
import torch

from app.engine.batch import DecodeBatch


def solo_logits(model, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Greedy logits of one sequence prefilled in one piece and decoded by itself."""
    batch = DecodeBatch(model)
    logits = [batch.prefill([prompt], [None]).logits[0]]
    for _ in range(steps):
        logits.append(batch.step([int(logits[-1].argmax())]).logits[0])
    return logits


@pytest.fixture
def workers():
    """Workers a test starts; closed (cancelling their jobs) and joined after it."""
    started = []
    yield started
    for worker in started:
        worker.close(cancel=True)
        assert worker.join(10)
