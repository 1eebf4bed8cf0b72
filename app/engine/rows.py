"""A KV-cache batch together with the jobs of its rows, and failure isolation between rows.

A failure is charged to the request that caused it. When a batched forward
pass raises, the batch is rolled back to before the step and each row is
stepped alone: rows that fail alone end with an error, the others go on in
one batch again. So one bad request (or a transient fault such as running out
of memory at a large batch) never ends its batch-mates' generations.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.batch import DecodeBatch, SoloSequence, Step
from app.engine.contract import CausalLM
from app.engine.job import GenerationJob
from app.engine.kvcache import full_attention
from app.engine.mixed import Part, supports
from app.engine.sampling import BatchSampler

log = logging.getLogger(__name__)

_WHOLE = 1 << 30  # a budget for a whole prompt


@dataclass
class PassCounters:
    """Forward passes that ran: prefills, and decode steps (batched or, after a fault, alone)."""

    prefills: int = 0
    decode_steps: int = 0


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
class _Round:
    """What one round of a JobBatch did, for its PrefillPace."""

    work: float = 0.0  # prompt work fed (PrefillPace units)
    budget: float | None = None  # the budget that sized it, where prompts waited
    step_s: float | None = None  # the rows' own pass, where it ran apart from the chunks
    clean: bool = True  # no pass raised (a fallback's time is no sample)


def keys_per_token(model: CausalLM) -> float:
    """Keys whose attention costs a query token as much as its matrix products (K).

    A prompt token's matrix products cost about 2 FLOPs per parameter of the layers
    (neither the embedding nor the LM head, which a prefill runs for the last token only);
    attending to one key costs 4 per layer and hidden unit (scores and weighted values,
    every query head). Infinite, so that positions cost nothing extra, for a model that
    does not say.
    """
    try:
        params = model.num_parameters(exclude_embeddings=True)
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight is not getattr(embedding, "weight", None):
            params -= head.weight.numel()  # counted above unless tied to the embedding
        config = model.config
        return params / (2 * config.num_hidden_layers * config.hidden_size)
    except (AttributeError, TypeError, ZeroDivisionError):
        return math.inf


class JobBatch:
    """Jobs decoded together: `jobs[i]` owns row i of `batch`; `solos` decode beside it.

    Jobs that join rows already decoding `wait`, then are prefilled into a
    SoloSequence each, PrefillPace's budget of prompt tokens a round. Where the model
    allows (SDPA, full attention) and no attention is watched, a round is one mixed
    pass (app/engine/mixed.py): the rows' step, the prompts' chunks and the decoding
    solos' next tokens together; a solo becomes a row once that is cheap (it is no
    longer than the rows, or there are none) and meanwhile decodes beside them.
    Otherwise a round is the chunks' own passes, then the rows' step, and a solo
    becomes a row as soon as its prompt is in. `add` and `advance` return the jobs
    that ended (finished, cancelled or failed); they have already left, and the
    caller retires them.
    """

    def __init__(self, model: CausalLM, counters: PassCounters, prefill_chunk: int = 128) -> None:
        self._model = model
        self._counters = counters
        self.pace = PrefillPace(prefill_chunk, keys_per_token(model))
        self.batch = DecodeBatch(model)
        self.jobs: list[GenerationJob] = []
        self.waiting: list[GenerationJob] = []  # to prefill, in arrival order
        self.solos: list[tuple[GenerationJob, SoloSequence]] = []  # in arrival order
        self._sampler = BatchSampler()  # keeps per-row parameter tensors while the rows stay
        self._can_mix = supports(model) and full_attention(model)
        self._round = _Round()  # what the round under way did, for the pace

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def mergeable(self) -> bool:
        """Whether new rows can join (see DecodeBatch.mergeable)."""
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
        try:
            step = self.batch.prefill([j.prompt_ids for j in jobs], [j.watch for j in jobs])
        except Exception as exc:  # the prefill never touched the running rows' cache
            self._round.clean = False
            if len(jobs) == 1:
                fail(jobs[0], exc)
                return list(jobs)
            log.warning(
                "a prefill of %d prompts failed (%s); prefilling each alone", len(jobs), exc
            )
            return [ended for job in jobs for ended in self.add([job])]
        self._round.work += self._work(jobs)
        self._counters.prefills += 1
        first = len(self.jobs)
        self.jobs += jobs
        return self._take(step, first)

    def wait(self, jobs: Sequence[GenerationJob]) -> None:
        """Queue jobs to join the running rows (see `advance`)."""
        self.waiting += jobs

    def advance(self) -> list[GenerationJob]:
        """One round: some of the joining prompts, and one token for every decoding job."""
        started = time.perf_counter()
        ended = self._drop_cancelled()
        waited = bool(self.jobs or self._decoding())  # streams that wait for this round
        self._round = done = _Round()
        mixing = self._mixing()
        ended += self._mixed_round() if mixing else self._prefill_alone() + self._step()
        # The whole round, sampling and rows joining included, is the streams' gap. A round
        # that went through a failure path (a pass raised, parts ran alone) is no sample.
        if waited and done.clean:
            seconds = time.perf_counter() - started
            if not done.work:
                self.pace.stepped(seconds)
            else:
                if done.step_s is not None:  # the rows' own pass, apart from the chunks'
                    self.pace.stepped(done.step_s)
                self.pace.prefilled(done.work, seconds, mixed=mixing, budget=done.budget)
        return ended

    def _mixing(self) -> bool:
        jobs = [*self.jobs, *self.waiting, *(job for job, _ in self.solos)]
        return self._can_mix and all(job.watch is None for job in jobs)

    # -- a round in one mixed pass --

    def _mixed_round(self) -> list[GenerationJob]:
        self._make_rows(cheap_only=True)
        feeding = [(job, solo, solo.part(0, job.last_token)) for job, solo in self._decoding()]
        feeding += self._prompt_parts()
        if not self.jobs and not feeding:
            return []
        try:
            step, logits = self.batch.mixed_step(
                [job.last_token for job in self.jobs], [part for _, _, part in feeding]
            )
        except Exception as exc:  # nothing was kept: run the round's passes apart instead
            self._round.clean = False
            for _, solo, _ in feeding:
                solo.roll_back()
            log.warning("a mixed pass failed (%s); running its parts alone", exc)
            ended = self._prefill_alone() + self._step()
            if not any(job.failed for job in ended):
                # No request was to blame: the model cannot take mixed passes (its code
                # rejects the packed call). Stop trying for this group.
                log.warning("mixed passes are off for this batch: its parts ran alone")
                self._can_mix = False
            return ended
        prompt = [part for _, solo, part in feeding if solo.remaining]
        self._round.work += sum(self.pace.work(part.start, len(part.tokens)) for part in prompt)
        if self.jobs or any(not solo.remaining for _, solo, _ in feeding):
            self._counters.decode_steps += 1
        if any(part.wants_logits and solo.remaining for _, solo, part in feeding):
            self._counters.prefills += 1  # a pass that completed prompts
        ended = self._take(step, 0)
        given = iter(logits)
        for job, solo, part in feeding:
            solo.fed(part)
            if not part.wants_logits:
                continue
            if not self._take_solo(job, next(given), None):
                self.solos.remove((job, solo))
                ended.append(job)
        return ended

    def _prompt_parts(self) -> list[tuple[GenerationJob, SoloSequence, Part]]:
        """This round's prompt chunks, PrefillPace's budget of work in all: the prompts under
        way first, then waiting ones (which become solos). A long waiting prompt starts only
        in a round of its own; its chunks are planned on the whole budget. With nothing
        decoding there is no one to keep waiting: the prompts go in whole."""
        full = self.pace.budget() if self.jobs or self._decoding() else _WHOLE
        self._round.budget = full
        # Short prompts may fill a chunk even where the budget is smaller: one pass gives
        # each its first token, and rationing them would only add rounds before they run.
        budget, room = full, max(full, float(self.pace.chunk))
        parts = []
        for job, solo in [(job, solo) for job, solo in self.solos if solo.remaining]:
            if budget <= 0:
                break
            part = solo.part(self._chunk(solo, full), None)
            parts.append((job, solo, part))
            used = self.pace.work(part.start, len(part.tokens))
            budget, room = budget - used, room - used
        while self.waiting:
            whole = self.pace.work(0, len(self.waiting[0].prompt_ids))
            if whole > room and (parts or budget < full):
                break
            job = self.waiting.pop(0)
            solo = SoloSequence(self._model, job.prompt_ids, job.watch)
            self.solos.append((job, solo))
            tokens = solo.remaining if whole <= room else self._chunk(solo, full)
            parts.append((job, solo, solo.part(tokens, None)))
            used = self.pace.work(0, tokens)
            budget, room = budget - used, room - used
        return parts

    def _chunk(self, solo: SoloSequence, budget: float) -> int:
        """Prompt tokens for this pass: a prompt's passes are counted at its first chunk and
        share its work about equally. 900 tokens at 128 a pass go in as 8 of about 113, not
        7 of 128 and a last one of 4 (a pass that costs the running streams a step and the
        joiner almost nothing). Should the plan's share stray more than a tenth from the
        budget, which follows the device, the rest is counted again. A probe's chunk is not
        planned: the passes are counted on the first budget that follows a measured round
        (counted on the probe's, a 900-token prompt had gone in as 31 passes of the probe's
        size where the budget allowed a sixth more)."""
        if self.pace.probing():
            return min(self.pace.tokens(solo.done, budget), solo.remaining)
        remaining = self.pace.work(solo.done, solo.remaining)
        budget = max(min(budget, self.pace.work(solo.done, self.pace.chunk)), 1.0)
        if solo.passes_left is None:
            solo.passes_left = math.ceil(remaining / budget)
        share = remaining / max(solo.passes_left, 1)
        if not 0.9 * budget <= share <= 1.1 * budget and remaining > budget:
            solo.passes_left = math.ceil(remaining / budget)
            share = remaining / solo.passes_left
        solo.passes_left -= 1
        return self.pace.tokens(solo.done, share)

    def _work(self, jobs: Sequence[GenerationJob]) -> float:
        """The prompt work of prefilling these jobs together (left-padded to the longest)."""
        return len(jobs) * self.pace.work(0, max(len(job.prompt_ids) for job in jobs))

    def _decoding(self) -> list[tuple[GenerationJob, SoloSequence]]:
        return [(job, solo) for job, solo in self.solos if not solo.remaining]

    def _make_rows(self, cheap_only: bool) -> None:
        """Solos whose prompts are in become rows: all of them, or those that widen no row's
        cache (a copy of the whole batch), taking the place of an empty batch first."""
        for job, solo in self._decoding():
            if cheap_only and len(self.batch) and solo.done > self.batch.width:
                continue
            self.solos.remove((job, solo))
            solo.join(self.batch)
            self.jobs.append(job)

    # -- a round in passes of their own --

    def _prefill_alone(self) -> list[GenerationJob]:
        """Prefill waiting prompts, each pass apart from the rows' step: PrefillPace's budget
        of work while anything decodes, everything when nothing does."""
        ended = []
        decoding = self.jobs or self._decoding()
        budget = self.pace.budget(mixed=False) if decoding else _WHOLE
        self._round.budget = budget
        while budget > 0:
            partial = next(((j, s) for j, s in self.solos if s.remaining), None)
            if partial is None:
                if not self.waiting:
                    break
                # The longest run of waiting prompts that fits is prefilled in one pass. Short
                # prompts may fill a whole chunk: a pass costs about a step however few its
                # tokens, so rationing them below that would only add passes.
                fits = max(budget, self.pace.chunk)
                count = 0
                while count < len(self.waiting) and self._work(self.waiting[: count + 1]) <= fits:
                    count += 1
                if count:
                    budget -= self._work(self.waiting[:count])
                    jobs, self.waiting = self.waiting[:count], self.waiting[count:]
                    ended += self.add(jobs)
                    continue
                job = self.waiting.pop(0)  # too long for the budget: prefill it in chunks
                partial = (job, SoloSequence(self._model, job.prompt_ids, job.watch))
                self.solos.append(partial)
            job, solo = partial
            start, tokens = solo.done, min(self.pace.tokens(solo.done, budget), solo.remaining)
            work = self.pace.work(start, tokens)
            budget -= work
            self._round.work += work
            try:
                step = solo.advance(tokens)
            except Exception as exc:  # its own cache: the running rows are untouched
                self._round.clean = False
                self.solos.remove(partial)
                fail(job, exc)
                ended.append(job)
                continue
            if step is not None:
                self._counters.prefills += 1
                # Its first token now; it becomes a row only before the next step, so that
                # copying the cache into a wider one is not on this gap too.
                if not self._take_solo(job, step.logits[0], step.attention[0]):
                    self.solos.remove(partial)
                    ended.append(job)
        return ended

    def _step(self) -> list[GenerationJob]:
        """One forward pass for every row; prefilled solos become rows first."""
        self._make_rows(cheap_only=False)
        if not self.jobs:
            return []
        started = time.perf_counter()
        try:
            step = self.batch.step([job.last_token for job in self.jobs])
        except Exception as exc:  # the batch has been rolled back to before this step
            self._round.clean = False
            return self._step_rows_alone(exc)
        self._counters.decode_steps += 1
        ended = self._take(step, 0)
        self._round.step_s = time.perf_counter() - started
        return ended

    # -- both --

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

    def _take_solo(self, job: GenerationJob, logits: torch.Tensor, attention) -> bool:
        """A solo's next token (its first, after the prompt); False once it has ended."""
        try:
            (choice,) = BatchSampler().choose(logits[None], [job.sampler])
        except Exception:
            choice = None  # choose it alone, failing alone
        return _take(job, logits, attention, choice)

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
                fail(job, exc)
            return self._remove(list(range(len(self.jobs))))
        log.warning("a step of %d rows failed (%s); stepping each alone", len(self.jobs), exc)
        singles, jobs = self.batch.split(), self.jobs
        self.batch, self.jobs = DecodeBatch(self._model), []
        ended = []
        for job, single in zip(jobs, singles, strict=True):
            try:
                step = single.step([job.last_token])
            except Exception as row_exc:
                fail(job, row_exc)
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


def _take(job: GenerationJob, logits: torch.Tensor, attention, choice=None) -> bool:
    """Hand a row's logits (or its chosen token, or its sampling failure) to its job;
    False once the job has ended (a failure ends it)."""
    if isinstance(choice, Exception):
        fail(job, choice)
        return False
    try:
        return job.take(logits, attention, choice)
    except Exception as exc:  # sampling or decoding this row failed: only this job ends
        fail(job, exc)
        return False


def fail(job: GenerationJob, exc: Exception) -> None:
    """End a job with an error event naming the exception (logged with its traceback)."""
    log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
