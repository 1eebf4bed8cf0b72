"""Failure isolation: a part of a round that raises is charged to its own jobs only.

A round runs parts: forward passes (a prefill, a chunk, a step, a mixed pass) and
sampling calls. `isolated` runs one and, should it raise, ends only the jobs that
part was for, or hands them to a fallback that takes them on without it (each job
alone, or the passes apart). So one bad request, or a transient fault such as running
out of memory at a large batch, never ends the generations of the jobs beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from app.engine.job import GenerationJob
from app.engine.pace import RoundRecord
from app.engine.sampling import BatchSampler, Choice

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Failed:
    """What `isolated` returns for a part that raised: the jobs that ended because of it."""

    ended: list[GenerationJob]


def isolated(
    record: RoundRecord,
    jobs: Sequence[GenerationJob],
    part: Callable[[], T],
    alone: Callable[[Exception], list[GenerationJob]] | None = None,
    forward_pass: bool = True,
) -> T | Failed:
    """Run one part of a round for `jobs`, and charge its failure to them only.

    When a `forward_pass` raises, the round (`record`) is no sample for the pace: its time
    holds a failed pass, and perhaps its parts run again apart. A failed sampling call or
    hand-off to a job leaves the round a sample: its passes ran as planned. Then
    `alone(exc)`, if given, takes the jobs on without the failed part and returns those
    that ended; else each of `jobs` ends with the error. Either way the caller gets a
    `Failed` with the ended jobs, never the exception.
    """
    try:
        return part()
    except Exception as exc:
        if forward_pass:
            record.clean = False
        if alone is not None:
            return Failed(alone(exc))
        for job in jobs:
            fail(job, exc)
        return Failed(list(jobs))


def choose(
    record: RoundRecord,
    sampler: BatchSampler,
    logits: torch.Tensor,
    jobs: Sequence[GenerationJob],
) -> Sequence[Choice | Exception | None]:
    """The rows' tokens chosen together from `logits` [rows, vocab], a row's own failure
    as an Exception; should the call itself fail, None for every row: each then chooses
    alone (in `hand`), so that only a row whose own sampling fails ends."""

    def together() -> list[Choice | Exception]:
        return sampler.choose(logits, [job.sampler for job in jobs])

    choices = isolated(record, jobs, together, _each_alone, forward_pass=False)
    return [None] * len(jobs) if isinstance(choices, Failed) else choices


def _each_alone(exc: Exception) -> list[GenerationJob]:
    log.warning("sampling rows together failed (%s); sampling each alone", exc)
    return []  # none ended yet


def hand(
    record: RoundRecord,
    job: GenerationJob,
    logits: torch.Tensor,
    attention: torch.Tensor | None,
    choice: Choice | Exception | None = None,
) -> bool:
    """Hand a row's logits [vocab] (and its chosen token, or its sampling failure) to its
    job; False once the job has ended (a failure ends it)."""
    if isinstance(choice, Exception):
        fail(job, choice)
        return False
    going = isolated(record, [job], lambda: job.take(logits, attention, choice), forward_pass=False)
    return not isinstance(going, Failed) and going


def fail(job: GenerationJob, exc: Exception) -> None:
    """End a job with an error event naming the exception (logged with its traceback)."""
    log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
