"""A KV-cache batch together with the jobs of its rows, and failure isolation between rows.

A failure is charged to the request that caused it. When a batched forward
pass raises, the batch is rolled back to before the step and each row is
stepped alone: rows that fail alone end with an error, the others go on in
one batch again. So one bad request (or a transient fault such as running out
of memory at a large batch) never ends its batch-mates' generations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.batch import ChunkedPrefill, DecodeBatch, Step
from app.engine.contract import CausalLM
from app.engine.job import GenerationJob
from app.engine.sampling import BatchSampler

log = logging.getLogger(__name__)


@dataclass
class PassCounters:
    """Forward passes that ran: prefills, and decode steps (batched or, after a fault, alone)."""

    prefills: int = 0
    decode_steps: int = 0


class PrefillPace:
    """How many prompt tokens to prefill between two decoding steps of running rows.

    At most `chunk`, and no more than fit in `STEPS` decoding steps' time, judged from
    the latest step and the latest prefill's speed: a running stream's gap then stays
    within about 1 + STEPS steps whatever the device (a step on a GPU costs as much as
    hundreds of prompt tokens, on a CPU as much as a few dozen). On a device the
    prefill keeps busy, the joiner's first token then comes after about
    (1 + 1 / STEPS) times its solo prefill: STEPS trades one against the other.
    """

    STEPS = 1.8
    MIN_TOKENS = 16  # progress even when a step is cheap next to a prompt token

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self._step_s: float | None = None
        self._token_s: float | None = None

    def budget(self) -> int:
        """Prompt tokens to prefill before the next step."""
        if self._step_s is None or self._token_s is None:
            return self.chunk
        fit = int(self.STEPS * self._step_s / self._token_s)
        return max(min(self.MIN_TOKENS, self.chunk), min(self.chunk, fit))

    def stepped(self, seconds: float) -> None:
        """A decoding step of the running rows took this long."""
        self._step_s = seconds if self._step_s is None else 0.7 * self._step_s + 0.3 * seconds

    def prefilled(self, tokens: int, seconds: float) -> None:
        """A prefill pass over this many prompt tokens (padding included) took this long."""
        self._token_s = seconds / max(tokens, 1)


class JobBatch:
    """Jobs decoded together: `jobs[i]` owns row i of `batch`.

    Jobs that join rows already decoding `wait` and are prefilled by `prefill_waiting`,
    a few prompt tokens between two steps (see PrefillPace): short prompts together
    in one pass, a long one a chunk at a time. `add`, `prefill_waiting` and `step` return
    the jobs that ended (finished, cancelled or failed); they have already left the
    batch, and the caller retires them.
    """

    def __init__(self, model: CausalLM, counters: PassCounters, prefill_chunk: int = 128) -> None:
        self._model = model
        self._counters = counters
        self.pace = PrefillPace(prefill_chunk)
        self.batch = DecodeBatch(model)
        self.jobs: list[GenerationJob] = []
        self.waiting: list[GenerationJob] = []  # to prefill, in arrival order
        self._partial: tuple[GenerationJob, ChunkedPrefill] | None = None  # a prompt half in
        self._joined: list[tuple[GenerationJob, ChunkedPrefill]] = []  # prefilled, not yet rows
        self._cancelled_early: list[GenerationJob] = []
        self._sampler = BatchSampler()  # keeps per-row parameter tensors while the rows stay

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def mergeable(self) -> bool:
        """Whether new rows can join (see DecodeBatch.mergeable)."""
        return self.batch.mergeable

    def add(self, jobs: Sequence[GenerationJob]) -> list[GenerationJob]:
        """Prefill `jobs` together and make them rows; a failed prefill is retried per job."""
        started = time.perf_counter()
        try:
            step = self.batch.prefill([j.prompt_ids for j in jobs], [j.watch for j in jobs])
            self.pace.prefilled(_cost(jobs), time.perf_counter() - started)
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

    @property
    def busy(self) -> bool:
        """Whether any job is decoding or waiting to join."""
        return bool(self.jobs or self.waiting or self._partial or self._joined)

    def wait(self, jobs: Sequence[GenerationJob]) -> None:
        """Queue jobs to join the running rows (see `prefill_waiting`)."""
        self.waiting += jobs

    def prefill_waiting(self) -> list[GenerationJob]:
        """Prefill waiting jobs: PrefillPace's budget of tokens while rows are decoding,
        everything when none is. A job joins the rows once its whole prompt is in."""
        ended = self._drop_cancelled()
        budget = self.pace.budget() if self.jobs else float("inf")
        while budget > 0 and (self._partial or self.waiting):
            if self._partial is None:
                # The longest run of waiting prompts that fits is prefilled in one pass. Short
                # prompts may fill a whole chunk: a pass costs about a step however few its
                # tokens, so rationing them below that would only add passes.
                fits = max(budget, self.pace.chunk)
                count = 0
                while count < len(self.waiting) and _cost(self.waiting[: count + 1]) <= fits:
                    count += 1
                if count:
                    budget -= _cost(self.waiting[:count])
                    jobs, self.waiting = self.waiting[:count], self.waiting[count:]
                    ended += self.add(jobs)
                    continue
                job = self.waiting.pop(0)  # too long for the budget: prefill it in chunks
                self._partial = (job, ChunkedPrefill(self._model, job.prompt_ids, job.watch))
            job, prefill = self._partial
            tokens = int(min(budget, prefill.remaining))
            budget -= tokens
            started = time.perf_counter()
            try:
                step = prefill.advance(tokens)
                self.pace.prefilled(tokens, time.perf_counter() - started)
            except Exception as exc:  # its own cache: the running rows are untouched
                self._partial = None
                _fail(job, exc)
                ended.append(job)
                continue
            if step is not None:
                self._partial = None
                self._counters.prefills += 1
                # Its first token now; it joins the rows' cache only before the next step,
                # so that copying the cache into a wider one is not on this gap too.
                if self._take_first(job, step):
                    self._joined.append((job, prefill))
                else:
                    ended.append(job)
        return ended

    def _take_first(self, job: GenerationJob, step: Step) -> bool:
        """A prefilled job's first token, before it is a row; False once it has ended."""
        try:
            (choice,) = BatchSampler().choose(step.logits, [job.sampler])
        except Exception:
            choice = None  # choose it alone, failing alone
        return _take(job, step.logits[0], step.attention[0], choice)

    def _merge_joined(self) -> None:
        for job, prefill in self._joined:
            if job.cancelled:  # never a row: end it here
                job.end_cancelled()
                self._cancelled_early.append(job)
                continue
            prefill.join(self.batch)
            self.jobs.append(job)
        self._joined = []

    def _drop_cancelled(self) -> list[GenerationJob]:
        ended = [job for job in self.waiting if job.cancelled]
        if self._partial and self._partial[0].cancelled:
            ended.append(self._partial[0])
            self._partial = None
        self.waiting = [job for job in self.waiting if not job.cancelled]
        for job in ended:
            job.end_cancelled()
        return ended

    def step(self) -> list[GenerationJob]:
        """One forward pass for every row; prefilled jobs become rows first, cancelled rows
        leave first."""
        self._merge_joined()
        ended, self._cancelled_early = self._cancelled_early, []
        cancelled = [i for i, job in enumerate(self.jobs) if job.cancelled]
        for i in cancelled:
            self.jobs[i].end_cancelled()
        ended += self._remove(cancelled)
        if not self.jobs:
            return ended
        started = time.perf_counter()
        try:
            step = self.batch.step([job.last_token for job in self.jobs])
        except Exception as exc:  # the batch has been rolled back to before this step
            return ended + self._step_rows_alone(exc)
        self._counters.decode_steps += 1
        ended += self._take(step, 0)
        self.pace.stepped(time.perf_counter() - started)  # the forward pass and the sampling
        return ended

    def _take(self, step: Step, first: int) -> list[GenerationJob]:
        """Give rows `first`.. their tokens (step row 0 is row `first`); drop the ended ones.

        The rows' tokens are chosen together; should that fail, each row chooses alone,
        so that only a row whose own sampling fails ends.
        """
        jobs = self.jobs[first : first + len(step.logits)]
        # Prefilled rows are a passing composition: keep the running rows' tensors.
        sampler = self._sampler if first == 0 else BatchSampler()
        try:
            choices = sampler.choose(step.logits, [job.sampler for job in jobs])
        except Exception as exc:
            log.warning(
                "sampling %d rows together failed (%s); sampling each alone", len(jobs), exc
            )
            ended = [
                not _take(job, step.logits[i], step.attention[i]) for i, job in enumerate(jobs)
            ]
        else:
            ended = [
                not _take(job, step.logits[i], step.attention[i], choice)
                for i, (job, choice) in enumerate(zip(jobs, choices, strict=True))
            ]
        return self._remove([first + i for i, gone in enumerate(ended) if gone])

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


def _cost(jobs: Sequence[GenerationJob]) -> int:
    """Prompt tokens a prefill of these jobs together computes (left-padded to the longest)."""
    return len(jobs) * max(len(job.prompt_ids) for job in jobs)


def _take(job: GenerationJob, logits: torch.Tensor, attention, choice=None) -> bool:
    """Hand a row's logits (or its chosen token, or its sampling failure) to its job;
    False once the job has ended (a failure ends it)."""
    if isinstance(choice, Exception):
        _fail(job, choice)
        return False
    try:
        return job.take(logits, attention, choice)
    except Exception as exc:  # sampling or decoding this row failed: only this job ends
        _fail(job, exc)
        return False


def _fail(job: GenerationJob, exc: Exception) -> None:
    log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
