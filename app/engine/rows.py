"""A KV-cache batch together with the jobs of its rows, and failure isolation between rows.

A failure is charged to the request that caused it. When a batched forward
pass raises, the batch is rolled back to before the step and each row is
stepped alone: rows that fail alone end with an error, the others go on in
one batch again. So one bad request (or a transient fault such as running out
of memory at a large batch) never ends its batch-mates' generations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.batch import DecodeBatch, Step
from app.engine.contract import CausalLM
from app.engine.job import GenerationJob

log = logging.getLogger(__name__)


@dataclass
class PassCounters:
    """Forward passes that ran: prefills, and decode steps (batched or, after a fault, alone)."""

    prefills: int = 0
    decode_steps: int = 0


class JobBatch:
    """Jobs decoded together: `jobs[i]` owns row i of `batch`.

    `add` and `step` return the jobs that ended (finished, cancelled or failed);
    they have already left the batch, and the caller retires them.
    """

    def __init__(self, model: CausalLM, counters: PassCounters) -> None:
        self._model = model
        self._counters = counters
        self.batch = DecodeBatch(model)
        self.jobs: list[GenerationJob] = []

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def mergeable(self) -> bool:
        """Whether new rows can join (see DecodeBatch.mergeable)."""
        return self.batch.mergeable

    def add(self, jobs: Sequence[GenerationJob]) -> list[GenerationJob]:
        """Prefill `jobs` together and make them rows; a failed prefill is retried per job."""
        try:
            step = self.batch.prefill([j.prompt_ids for j in jobs], [j.watch for j in jobs])
        except Exception as exc:  # the prefill never touched the running rows' cache
            if len(jobs) == 1:
                _fail(jobs[0], exc)
                return list(jobs)
            log.warning(
                "a prefill of %d prompts failed (%s); prefilling each alone", len(jobs), exc
            )
            return [ended for job in jobs for ended in self.add([job])]
        self._counters.prefills += 1
        first = len(self.jobs)
        self.jobs += jobs
        return self._take(step, first)

    def step(self) -> list[GenerationJob]:
        """One forward pass for every row; cancelled rows leave first."""
        cancelled = [i for i, job in enumerate(self.jobs) if job.cancelled]
        for i in cancelled:
            self.jobs[i].end_cancelled()
        ended = self._remove(cancelled)
        if not self.jobs:
            return ended
        try:
            step = self.batch.step([job.last_token for job in self.jobs])
        except Exception as exc:  # the batch has been rolled back to before this step
            return ended + self._step_rows_alone(exc)
        self._counters.decode_steps += 1
        return ended + self._take(step, 0)

    def _take(self, step: Step, first: int) -> list[GenerationJob]:
        """Give rows `first`.. their logits (step row 0 is row `first`); drop the ended ones."""
        done = [
            first + i
            for i in range(len(step.logits))
            if not _take(self.jobs[first + i], step.logits[i], step.attention[i])
        ]
        return self._remove(done)

    def _step_rows_alone(self, exc: Exception) -> list[GenerationJob]:
        if len(self.jobs) == 1 or not self.batch.mergeable:
            for job in self.jobs:
                _fail(job, exc)
            return self._remove(list(range(len(self.jobs))))
        log.warning("a step of %d rows failed (%s); stepping each alone", len(self.jobs), exc)
        singles, jobs = self.batch.split(), self.jobs
        self.batch, self.jobs = DecodeBatch(self._model), []
        ended = []
        for job, single in zip(jobs, singles, strict=True):
            try:
                step = single.step([job.last_token])
            except Exception as row_exc:
                _fail(job, row_exc)
                ended.append(job)
                continue
            self._counters.decode_steps += 1
            if _take(job, step.logits[0], step.attention[0]):
                self.batch.concatenate(single)
                self.jobs.append(job)
            else:
                ended.append(job)
        return ended

    def _remove(self, rows: list[int]) -> list[GenerationJob]:
        if not rows:
            return []
        self.batch.remove(rows)
        leaving = set(rows)
        ended = [self.jobs[i] for i in rows]
        self.jobs = [job for i, job in enumerate(self.jobs) if i not in leaving]
        return ended


def _take(job: GenerationJob, logits: torch.Tensor, attention: torch.Tensor | None) -> bool:
    """Hand a row's logits to its job; False once the job has ended (a failure ends it)."""
    try:
        return job.take(logits, attention)
    except Exception as exc:  # sampling or decoding this row failed: only this job ends
        _fail(job, exc)
        return False


def _fail(job: GenerationJob, exc: Exception) -> None:
    log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
