"""Planning a round: which prompt work and which rows a round of a running group runs.

The split follows vLLM v1's scheduler, whose `Scheduler.schedule()` returns a
`SchedulerOutput` (what to feed this step) that the model runner executes, with
`update_from_output()` taking the results back: here `plan_round` is a pure
function of lengths, budgets and the pace's state, and returns a `RoundPlan`
value; the running group (app/engine/running.py) executes it and isolates the
failures of its passes. No torch and no model: a plan can be built and checked
from plain numbers.

Two kinds of round share the one planner. A mixed round is one forward pass
(app/engine/mixed.py): the rows' step, the prompts' chunks and the decoding
solos' next tokens together. A round of separate passes runs the chunks' passes,
then the rows' step. Their policies differ where their costs do; each difference
is marked "mixed:" or "separate:" below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.pace import WHOLE, PrefillPace


@dataclass(frozen=True)
class SoloState:
    """A sequence with a KV cache of its own (a SoloSequence), as the planner sees it."""

    done: int  # tokens in its cache
    remaining: int  # prompt tokens not yet in it (0: it decodes)
    passes_left: int | None = None  # its prompt's plan, made at its first measured chunk


@dataclass(frozen=True)
class Chunk:
    """Prompt tokens start..start+tokens-1 of one solo, fed this round.

    `solo` indexes the round's solos: those the plan was made from, in order, then the
    ones this round starts, in the order they start. A chunk with `new` starts its
    solo: the next waiting prompt becomes it.
    """

    solo: int
    start: int
    tokens: int
    work: float  # PrefillPace units
    last: bool  # it completes the prompt: its pass gives the first token
    passes_left: int | None = None  # the solo's plan after this chunk
    new: bool = False


@dataclass(frozen=True)
class PrefillRun:
    """The next `count` waiting prompts, prefilled together (left-padded) as new rows."""

    count: int
    work: float  # PrefillPace units: count x the longest prompt's


@dataclass(frozen=True)
class RoundPlan:
    """One round, decided before any pass runs (a vLLM `SchedulerOutput`, in spirit).

    `feed` is the prompt work in order. `join`: solos that become rows of the decode
    batch (mixed: before the pass; separate: after the chunks, before the step, and
    only those still there). `decode`: solos that decode beside the rows in the mixed
    pass, a token each (empty for separate passes).
    """

    mixed: bool
    budget: float  # the prompt work it was sized on; WHOLE when nothing decodes
    feed: tuple[Chunk | PrefillRun, ...] = ()
    join: tuple[int, ...] = ()
    decode: tuple[int, ...] = ()

    @property
    def work(self) -> float:
        """The prompt work planned (PrefillPace units)."""
        return sum(item.work for item in self.feed)

    @property
    def chunks(self) -> list[Chunk]:
        """The prompt chunks of `feed`, in order (all of it, in a mixed round)."""
        return [item for item in self.feed if isinstance(item, Chunk)]


def plan_round(
    pace: PrefillPace,
    *,
    mixed: bool,
    rows: int,
    width: int,
    solos: Sequence[SoloState],
    waiting: Sequence[int],
) -> RoundPlan:
    """Plan a round of `rows` decoding rows (a cache `width` columns wide), `solos`, and
    waiting prompts of these lengths (in arrival order); `mixed`: in one pass.

    The budget is the pace's while anything decodes; with nothing decoding there is no
    one to keep waiting, and the prompts go in whole. Reads `pace`, changes nothing.
    """
    decoding = rows > 0 or any(not solo.remaining for solo in solos)
    budget = pace.budget(mixed=mixed) if decoding else WHOLE
    if mixed:
        join, decode = _cheap_joins(rows, width, solos)
        return RoundPlan(True, budget, _mixed_feed(pace, budget, solos, waiting), join, decode)
    feed = _separate_feed(pace, budget, solos, waiting)
    # separate: a solo becomes a row as soon as its prompt is in (before this round's step).
    completed = {chunk.solo for chunk in feed if isinstance(chunk, Chunk) and chunk.last}
    rows_after = [i for i, solo in enumerate(solos) if not solo.remaining or i in completed]
    rows_after += sorted(i for i in completed if i >= len(solos))  # started this round
    return RoundPlan(False, budget, tuple(feed), tuple(rows_after))


def _cheap_joins(
    rows: int, width: int, solos: Sequence[SoloState]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """mixed: decoding solos that widen no row's cache join (a wider one is a copy of the
    whole batch), the first taking the place of an empty batch; the others decode beside
    the rows, a token a pass. Returns (joining, decoding beside)."""
    join, beside = [], []
    for i, solo in enumerate(solos):
        if solo.remaining:
            continue
        if rows and solo.done > width:
            beside.append(i)
            continue
        join.append(i)
        rows, width = rows + 1, max(width, solo.done)
    return tuple(join), tuple(beside)


def _mixed_feed(
    pace: PrefillPace, full: float, solos: Sequence[SoloState], waiting: Sequence[int]
) -> tuple[Chunk, ...]:
    """mixed: the prompts under way first, then waiting ones, each a solo of its own (one
    pass takes any number of sequences). A long waiting prompt starts only in a round of
    its own; chunks are planned on the whole budget (`_share`)."""
    # Short prompts may fill a chunk even where the budget is smaller: one pass gives each
    # its first token, and rationing them would only add rounds before they run.
    budget, room = full, max(full, float(pace.chunk))
    feed: list[Chunk] = []
    for i, solo in enumerate(solos):
        if not solo.remaining:
            continue
        if budget <= 0:
            break
        tokens, passes = _share(pace, solo.done, solo.remaining, solo.passes_left, full)
        tokens = min(tokens, solo.remaining)
        work = pace.work(solo.done, tokens)
        feed.append(Chunk(i, solo.done, tokens, work, tokens == solo.remaining, passes))
        budget, room = budget - work, room - work
    for j, length in enumerate(waiting):
        whole = pace.work(0, length)
        if whole > room and (feed or budget < full):
            break
        tokens, passes = length, None
        if whole > room:
            tokens, passes = _share(pace, 0, length, None, full)
            tokens = min(tokens, length)
        work = pace.work(0, tokens)
        feed.append(Chunk(len(solos) + j, 0, tokens, work, tokens == length, passes, new=True))
        budget, room = budget - work, room - work
    return tuple(feed)


def _share(
    pace: PrefillPace, done: int, remaining: int, passes_left: int | None, budget: float
) -> tuple[int, int | None]:
    """mixed: a chunk's tokens, and the prompt's passes left after it.

    A prompt's passes are counted at its first chunk and share its work about equally.
    900 tokens at 128 a pass go in as 8 of about 113, not 7 of 128 and a last one of 4
    (a pass that costs the running streams a step and the joiner almost nothing). Should
    the plan's share stray more than a tenth from the budget, which follows the device,
    the rest is counted again. A probe's chunk is not planned: the passes are counted on
    the first budget that follows a measured round (counted on the probe's, a 900-token
    prompt had gone in as 31 passes of the probe's size where the budget allowed a sixth
    more).
    """
    if pace.probing():
        return min(pace.tokens(done, budget), remaining), passes_left
    left = pace.work(done, remaining)
    budget = max(min(budget, pace.work(done, pace.chunk)), 1.0)
    if passes_left is None:
        passes_left = math.ceil(left / budget)
    share = left / max(passes_left, 1)
    if not 0.9 * budget <= share <= 1.1 * budget and left > budget:
        passes_left = math.ceil(left / budget)
        share = left / passes_left
    return pace.tokens(done, share), passes_left - 1


def _separate_feed(
    pace: PrefillPace, budget: float, solos: Sequence[SoloState], waiting: Sequence[int]
) -> list[Chunk | PrefillRun]:
    """separate: each pass costs about a step however few its tokens, so waiting prompts go
    in runs (the longest run that fits, in one pass, straight into rows), and a prompt too
    long for the budget becomes a solo fed the budget's tokens. Chunks are not planned
    ahead as in mixed rounds: each takes what the budget has left."""
    state = [[solo.done, solo.remaining] for solo in solos]  # as the passes will leave them
    passes = [solo.passes_left for solo in solos]
    feed: list[Chunk | PrefillRun] = []
    queued = 0  # waiting prompts taken so far
    while budget > 0:
        partial = next((i for i, (_, remaining) in enumerate(state) if remaining), None)
        new = partial is None
        if partial is None:
            if queued == len(waiting):
                break
            # Short prompts may fill a whole chunk: rationing them below that would only
            # add passes.
            fits = max(budget, pace.chunk)
            count = 0
            while queued + count < len(waiting):
                if pace.padded_work(waiting[queued : queued + count + 1]) > fits:
                    break
                count += 1
            if count:
                work = pace.padded_work(waiting[queued : queued + count])
                feed.append(PrefillRun(count, work))
                budget -= work
                queued += count
                continue
            state.append([0, waiting[queued]])  # too long for the budget: in chunks
            passes.append(None)
            queued += 1
            partial = len(state) - 1
        done, remaining = state[partial]
        tokens = min(pace.tokens(done, budget), remaining)
        work = pace.work(done, tokens)
        feed.append(Chunk(partial, done, tokens, work, tokens == remaining, passes[partial], new))
        budget -= work
        state[partial] = [done + tokens, remaining - tokens]
    return feed
