"""A running group of jobs: each round it plans (app/engine/plan.py), then runs the plan.

Its passes' failures are isolated (app/engine/isolation.py). When the rows' batched
step raises, the batch is rolled back to before the step and each row is stepped
alone: rows that fail alone end with an error, the others go on in one batch again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import torch

from app.engine.batch import DecodeBatch
from app.engine.contract import CausalLM
from app.engine.interventions import Starts, for_rows
from app.engine.isolation import Failed, choose, fail, hand, isolated
from app.engine.job import GenerationJob
from app.engine.kvcache import full_attention
from app.engine.lean import LeanStep
from app.engine.mixed import supports
from app.engine.pace import PrefillPace, RoundRecord, keys_per_token
from app.engine.passes import Step
from app.engine.plan import Chunk, PrefillRun, RoundPlan, SoloState, plan_round
from app.engine.sampling import BatchSampler
from app.engine.solo import SoloSequence

log = logging.getLogger(__name__)

Solo = tuple[GenerationJob, SoloSequence]


@dataclass
class PassCounters:
    """Forward passes that ran: prefills, and decode steps (batched or, after a fault, alone)."""

    prefills: int = 0
    decode_steps: int = 0


class RunningGroup:
    """The running jobs that share a round: `jobs[i]` owns row i of `batch` (the decode
    batch's KV cache); `solos` have caches of their own; `waiting` are still to prefill.

    Named after the "running" requests of a continuous-batching scheduler (vLLM's
    `Scheduler.running`): admitted, and advanced every round, prefill or decode. A
    "group", not a batch: DecodeBatch is the batch, and solos and waiting prompts are no
    rows of it. A worker holds one group per KV cache that cannot take another's rows.

    Jobs that join rows already decoding `wait`, then are prefilled into a SoloSequence
    each, PrefillPace's budget of prompt work a round. Where the model allows (SDPA, full
    attention) and no member watches attention or has interventions, a round is one mixed
    pass (app/engine/mixed.py); otherwise the chunks' own passes, then the rows' step.
    Each pass has the hooks of its rows' interventions, masked to those rows
    (app/engine/interventions.py), and a step with any takes transformers' forward, not the
    lean step (which calls a block's parts past their hooks). `plan_round` decides which;
    `add` and `advance` return the jobs that ended (finished, cancelled or failed); they
    have already left, and the caller retires them.
    """

    def __init__(
        self,
        model: CausalLM,
        counters: PassCounters,
        prefill_chunk: int = 128,
        lean: LeanStep | None = None,
    ) -> None:
        """`lean`: the model's lean decoding step, where it has one (app/engine/lean.py)."""
        self._model = model
        self._counters = counters
        self.pace = PrefillPace(prefill_chunk, keys_per_token(model))
        self._lean = lean
        self.batch = DecodeBatch(model, lean)
        self.jobs: list[GenerationJob] = []
        self.waiting: list[GenerationJob] = []  # to prefill, in arrival order
        self.solos: list[Solo] = []  # in arrival order
        self._sampler = BatchSampler()  # keeps per-row parameter tensors while the rows stay
        self._can_mix = supports(model) and full_attention(model)
        self._round = RoundRecord()  # what the round under way did, for the pace

    def __len__(self) -> int:
        return len(self.jobs)

    def takes(self, job: GenerationJob) -> bool:
        """Whether `job` can join this group's rows (see DecodeBatch.mergeable)."""
        return self.batch.mergeable

    @property
    def members(self) -> list[GenerationJob]:
        """Every job of the group: rows, solos and waiting."""
        return [*self.jobs, *(job for job, _ in self.solos), *self.waiting]

    @property
    def busy(self) -> bool:
        """Whether any job is decoding or waiting to."""
        return bool(self.jobs or self.waiting or self.solos)

    def add(self, jobs: Sequence[GenerationJob]) -> list[GenerationJob]:
        """Prefill `jobs` together and make them rows; a failed prefill is retried per job."""
        prompts, watches = [j.prompt_ids for j in jobs], [j.watch for j in jobs]
        width = max(map(len, prompts))

        def prefill() -> Step:  # left-padded: row r's column 0 is its position len - width
            with self._changed(jobs, [len(p) - width for p in prompts]):
                return self.batch.prefill(prompts, watches)

        # The prefill never touches the running rows' cache: nothing to roll back.
        alone = partial(self._prefill_each, jobs) if len(jobs) > 1 else None
        step = isolated(self._round, jobs, prefill, alone)
        if isinstance(step, Failed):
            return step.ended
        self._round.work += self.pace.padded_work(list(map(len, prompts)))
        self._counters.prefills += 1
        first = len(self.jobs)
        self.jobs += jobs
        return self._take(step, first)

    def _prefill_each(self, jobs: Sequence[GenerationJob], exc: Exception) -> list[GenerationJob]:
        log.warning("a prefill of %d prompts failed (%s); prefilling each alone", len(jobs), exc)
        return [ended for job in jobs for ended in self.add([job])]

    def wait(self, jobs: Sequence[GenerationJob]) -> None:
        """Queue jobs to join the running rows (see `advance`)."""
        self.waiting += jobs

    def _changed(
        self, jobs: Sequence[GenerationJob], starts: Starts
    ) -> AbstractContextManager[None]:
        """The hooks of one pass whose row r is `jobs[r]` (see interventions.for_rows)."""
        return for_rows(self._model, [job.interventions for job in jobs], starts)

    def advance(self) -> list[GenerationJob]:
        """One round: some of the joining prompts, and one token for every decoding job."""
        started = time.perf_counter()
        ended = self._drop_cancelled()
        waited = bool(self.jobs or self._decoding())  # streams that wait for this round
        self._round = done = RoundRecord()
        plan = self._plan(mixed=self._mixing())
        ended += self._run_mixed(plan) if plan.mixed else self._run_separate(plan)
        # The whole round, sampling and rows joining included, is the streams' gap. A round
        # that went through a failure path (a part raised, parts ran alone) is no sample.
        if waited and done.clean:
            seconds = time.perf_counter() - started
            if not done.work:
                self.pace.stepped(seconds)
            else:
                if done.step_s is not None:  # the rows' own pass, apart from the chunks'
                    self.pace.stepped(done.step_s)
                self.pace.prefilled(done.work, seconds, mixed=plan.mixed, budget=done.budget)
        return ended

    def _mixing(self) -> bool:
        return self._can_mix and all(
            job.watch is None and job.interventions is None for job in self.members
        )

    def _plan(self, mixed: bool) -> RoundPlan:
        solos = [SoloState(solo.done, solo.remaining, solo.passes_left) for _, solo in self.solos]
        waiting = [len(job.prompt_ids) for job in self.waiting]
        return plan_round(
            self.pace,
            mixed=mixed,
            rows=len(self.jobs),
            width=self.batch.width,
            solos=solos,
            waiting=waiting,
        )

    # -- running a plan --

    def _solo(self, solos: list[Solo], chunk: Chunk) -> Solo:
        """The solo a chunk feeds (`solos`: the plan's, as they were); a new one starts with
        the next waiting prompt."""
        if chunk.new:
            job = self.waiting.pop(0)
            solos.append((job, SoloSequence(self._model, job.prompt_ids, job.watch)))
            self.solos.append(solos[-1])
        return solos[chunk.solo]

    def _chunk(self, job: GenerationJob, solo: SoloSequence, tokens: int) -> Step | None:
        """The next `tokens` of a solo's prompt, in a pass of its own."""
        with self._changed([job], [solo.done]):
            return solo.advance(tokens)

    def _join(self, solos: list[Solo], indices: Sequence[int]) -> None:
        """These solos become rows (those still here: a failed or ended one has left)."""
        for job, solo in _at(solos, indices):
            if (job, solo) in self.solos:
                self.solos.remove((job, solo))
                solo.join(self.batch)
                self.jobs.append(job)

    def _run_mixed(self, plan: RoundPlan) -> list[GenerationJob]:
        """The rows' step, the decoding solos' tokens and the prompts' chunks in one pass."""
        self._round.budget = plan.budget
        if not plan.feed and not plan.join and not plan.decode:
            # Only the rows decode: their plain step does the same work without the mixed
            # pass's per-layer filing and attention split (4.5 -> 3.9 ms a step on the demo
            # model at one row, 29 -> 27 ms on GPT-2 small's shape).
            return self._step()
        solos = list(self.solos)
        self._join(solos, plan.join)
        feeding = [(job, solo, solo.part(0, _newest(job))) for job, solo in _at(solos, plan.decode)]
        for chunk in plan.chunks:
            job, solo = self._solo(solos, chunk)
            solo.passes_left = chunk.passes_left
            feeding.append((job, solo, solo.part(chunk.tokens, None)))
        if not self.jobs and not feeding:
            return []
        parts = [part for *_, part in feeding]
        everyone = [*self.jobs, *(job for job, _, _ in feeding)]
        alone = partial(self._mixed_apart, [solo for _, solo, _ in feeding])

        def mixed_pass() -> tuple[Step, torch.Tensor]:
            return self.batch.mixed_step([_newest(job) for job in self.jobs], parts)

        out = isolated(self._round, everyone, mixed_pass, alone)
        if isinstance(out, Failed):
            return out.ended
        step, logits = out
        self._round.work += plan.work
        if self.jobs or plan.decode:
            self._counters.decode_steps += 1
        if any(chunk.last for chunk in plan.chunks):
            self._counters.prefills += 1  # a pass that completed prompts
        ended = self._take(step, 0)
        given = iter(logits)
        for job, solo, part in feeding:
            solo.fed(part)
            if part.wants_logits and not self._take_solo(job, next(given), None):
                self.solos.remove((job, solo))
                ended.append(job)
        return ended

    def _mixed_apart(self, solos: list[SoloSequence], exc: Exception) -> list[GenerationJob]:
        """A mixed pass raised: nothing was kept; run the round as separate passes instead."""
        for solo in solos:
            solo.roll_back()
        log.warning("a mixed pass failed (%s); running its parts alone", exc)
        ended = self._run_separate(self._plan(mixed=False))
        if not any(job.failed for job in ended):
            # No request was to blame: the model cannot take mixed passes (its code rejects
            # the packed call). Stop trying for this group.
            log.warning("mixed passes are off for this group: its parts ran alone")
            self._can_mix = False
        return ended

    def _run_separate(self, plan: RoundPlan) -> list[GenerationJob]:
        """The plan's prefill passes (runs of prompts into rows, chunks into solos), each
        apart from the rows' step, then the step."""
        self._round.budget = plan.budget
        solos, ended = list(self.solos), []
        for item in plan.feed:
            if isinstance(item, PrefillRun):
                jobs, self.waiting = self.waiting[: item.count], self.waiting[item.count :]
                ended += self.add(jobs)
                continue
            job, solo = self._solo(solos, item)
            if (job, solo) not in self.solos:
                continue  # an earlier chunk of it failed this round
            self._round.work += item.work
            # Its own cache: the running rows are untouched whatever happens.
            step = isolated(self._round, [job], partial(self._chunk, job, solo, item.tokens))
            if isinstance(step, Failed):
                self.solos.remove((job, solo))
                ended += step.ended
            elif step is not None:
                self._counters.prefills += 1
                # Its first token now; it becomes a row only before the step, so that
                # copying the cache into a wider one is not on this gap too.
                if not self._take_solo(job, step.logits[0], step.attention[0]):
                    self.solos.remove((job, solo))
                    ended.append(job)
        self._join(solos, plan.join)
        return ended + self._step()

    def _step(self) -> list[GenerationJob]:
        """One forward pass for every row."""
        if not self.jobs:
            return []
        started = time.perf_counter()

        def step_rows() -> Step:  # the batch rolls itself back to before the step if it raises
            return _step_rows(self.batch, self.jobs)

        step = isolated(self._round, self.jobs, step_rows, self._step_rows_alone)
        if isinstance(step, Failed):
            return step.ended
        self._counters.decode_steps += 1
        ended = self._take(step, 0)
        self._round.step_s = time.perf_counter() - started
        return ended

    def _step_rows_alone(self, exc: Exception) -> list[GenerationJob]:
        if len(self.jobs) == 1 or not self.batch.mergeable:
            for job in self.jobs:
                fail(job, exc)
            return self._remove(list(range(len(self.jobs))))
        log.warning("a step of %d rows failed (%s); stepping each alone", len(self.jobs), exc)
        singles, jobs = self.batch.split(), self.jobs
        self.batch, self.jobs = DecodeBatch(self._model, self._lean), []
        ended = []
        for job, single in zip(jobs, singles, strict=True):
            step = isolated(self._round, [job], partial(_step_rows, single, [job]))
            if isinstance(step, Failed):
                ended += step.ended
                continue
            self._counters.decode_steps += 1
            if hand(self._round, job, step.logits[0], step.attention[0]):
                self.batch.concatenate(single)
                self.jobs.append(job)
            else:
                ended.append(job)
        return ended

    def _take(self, step: Step, first: int) -> list[GenerationJob]:
        """Give rows `first`.. their tokens (step row 0 is row `first`); drop the ended ones."""
        jobs = self.jobs[first : first + len(step.logits)]
        # Prefilled rows are a passing composition: keep the running rows' tensors.
        sampler = self._sampler if first == 0 else BatchSampler()
        choices = choose(self._round, sampler, step.logits, jobs)
        ended = [
            not hand(self._round, job, step.logits[i], step.attention[i], choice)
            for i, (job, choice) in enumerate(zip(jobs, choices, strict=True))
        ]
        return self._remove([first + i for i, gone in enumerate(ended) if gone])

    def _take_solo(
        self, job: GenerationJob, logits: torch.Tensor, attention: torch.Tensor | None
    ) -> bool:
        """A solo's next token (its first, after the prompt); False once it has ended."""
        (choice,) = choose(self._round, BatchSampler(), logits[None], [job])
        return hand(self._round, job, logits, attention, choice)

    # -- both kinds of round --

    def _decoding(self) -> list[Solo]:
        return [(job, solo) for job, solo in self.solos if not solo.remaining]

    def _drop_cancelled(self) -> list[GenerationJob]:
        """End cancelled jobs, waiting, solo or rows, before the round's pass."""
        ended = [job for job in self.waiting if job.cancelled]
        self.waiting = [job for job in self.waiting if not job.cancelled]
        ended += [job for job, _ in self.solos if job.cancelled]
        self.solos = [(job, solo) for job, solo in self.solos if not job.cancelled]
        for job in ended:
            job.end_cancelled()
        cancelled = [i for i, job in enumerate(self.jobs) if job.cancelled]
        for i in cancelled:
            self.jobs[i].end_cancelled()
        return ended + self._remove(cancelled)

    def _remove(self, rows: list[int]) -> list[GenerationJob]:
        if not rows:
            return []
        self.batch.remove(rows)
        leaving = set(rows)
        ended = [self.jobs[i] for i in rows]
        self.jobs = [job for i, job in enumerate(self.jobs) if i not in leaving]
        return ended


def _at(solos: list[Solo], indices: Sequence[int]) -> list[Solo]:
    return [solos[i] for i in indices]


def _step_rows(batch: DecodeBatch, jobs: list[GenerationJob]) -> Step:
    """The step of `batch`, whose row r is `jobs[r]`, with the rows' interventions."""
    plain = all(job.interventions is None for job in jobs)
    with for_rows(batch.model, [job.interventions for job in jobs], None):
        return batch.step([_newest(job) for job in jobs], lean=plain)


def _newest(job: GenerationJob) -> int:
    """A decoding job's latest token: the next pass's input for it."""
    if job.last_token is None:
        raise RuntimeError("a job decodes before its first token")  # a bug of ours
    return job.last_token
