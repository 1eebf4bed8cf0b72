"""plan_round: a round's prompt chunks, runs and joining rows, from plain numbers (no model)."""

from __future__ import annotations

import dataclasses

import pytest

from app.engine.pace import WHOLE, PrefillPace
from app.engine.plan import Chunk, PrefillRun, RoundPlan, SoloState, plan_round


def _pace(chunk: int, budget: float | None = None) -> PrefillPace:
    """A pace (positions cost nothing extra) whose rows decode; with `budget`, a round of
    prompt work has been measured and the next budget is `budget` (else it probes)."""
    pace = PrefillPace(chunk)
    pace.stepped(1.0)
    if budget is not None:
        # A round of `budget` units that took GAP_STEPS steps: the target exactly.
        for mixed in (True, False):
            pace.prefilled(budget, PrefillPace.GAP_STEPS, mixed=mixed)
            assert pace.budget(mixed=mixed) == budget
    return pace


def _plan(pace: PrefillPace, mixed: bool, rows=1, width=8, solos=(), waiting=()) -> RoundPlan:
    return plan_round(pace, mixed=mixed, rows=rows, width=width, solos=solos, waiting=waiting)


@pytest.mark.parametrize("mixed", [True, False])
def test_with_nothing_decoding_the_prompts_go_in_whole(mixed):
    plan = _plan(_pace(16), mixed, rows=0, width=0, waiting=(40, 3, 100))
    assert plan.budget == WHOLE
    if mixed:  # mixed: each a solo of its own, in one pass
        assert [(c.solo, c.tokens, c.new, c.last) for c in plan.chunks] == [
            (0, 40, True, True),
            (1, 3, True, True),
            (2, 100, True, True),
        ]
    else:  # separate: one prefill of all three, straight into rows
        assert plan.feed == (PrefillRun(3, 3 * 100),)


def test_the_plan_is_a_value_and_planning_changes_nothing():
    pace = _pace(16, budget=16)
    before = (pace.budget(), pace.budget(mixed=False), pace.step_seconds, pace.probing())
    plan = _plan(pace, True, solos=(SoloState(4, 30, 2),), waiting=(5,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.budget = 0  # type: ignore[misc]
    assert (pace.budget(), pace.budget(mixed=False), pace.step_seconds, pace.probing()) == before
    assert plan == _plan(pace, True, solos=(SoloState(4, 30, 2),), waiting=(5,))


def test_a_mixed_round_probes_then_shares_a_long_prompt_out_evenly():
    # Probing: a first chunk of PROBE_TOKENS, and no plan of passes made on it.
    (chunk,) = _plan(_pace(128), True, waiting=(900,)).chunks
    assert (chunk.tokens, chunk.passes_left, chunk.new) == (PrefillPace.PROBE_TOKENS, None, True)
    # Measured: 900 tokens at 128 a round go in as 8 passes of about 113, not 7 of 128
    # and one of 4.
    pace = _pace(128, budget=128)
    solo, fed = SoloState(0, 900), []
    while solo.remaining:
        (chunk,) = _plan(pace, True, solos=(solo,)).chunks
        fed.append(chunk.tokens)
        assert chunk.start == solo.done and chunk.last == (chunk.tokens == solo.remaining)
        solo = SoloState(solo.done + chunk.tokens, solo.remaining - chunk.tokens, chunk.passes_left)
    assert len(fed) == 8 and sum(fed) == 900 and set(fed) <= {112, 113}


def test_a_mixed_round_lets_short_prompts_fill_a_chunk_and_holds_a_long_one_back():
    pace = _pace(32, budget=16)
    # Under way first; then short waiting prompts fill up to a chunk (32) in all.
    plan = _plan(pace, True, solos=(SoloState(8, 40, 3),), waiting=(6, 5, 12))
    tokens = [(c.solo, c.tokens, c.new) for c in plan.chunks]
    assert tokens[0][0] == 0 and not tokens[0][2]
    assert tokens[1:] == [(1, 6, True), (2, 5, True)]  # 12 more would pass the chunk
    # A long waiting prompt starts only in a round of its own.
    plan = _plan(pace, True, solos=(SoloState(8, 40, 3),), waiting=(100,))
    assert [c.solo for c in plan.chunks] == [0]


def test_a_separate_round_prefills_a_run_of_short_prompts_then_chunks_a_long_one():
    pace = _pace(16)  # probing: a budget of 16 tokens
    plan = _plan(pace, False, waiting=(3, 4, 5, 40))
    # The longest run that fits a chunk (3 prompts padded to 5: 15 tokens) in one pass;
    # the long one becomes a solo and takes what the budget has left: 1 token.
    assert plan.feed == (
        PrefillRun(3, 15),
        Chunk(solo=0, start=0, tokens=1, work=1, last=False, new=True),
    )
    assert plan.join == () and plan.decode == ()


def test_separate_chunks_take_what_the_budget_has_left_and_ignore_the_pass_plan():
    pace = _pace(128, budget=128)
    plan = _plan(pace, False, solos=(SoloState(100, 800, 7),))
    # mixed feeds the prompt's share (800 / 7: 115); separate, the budget's 128.
    assert [(c.tokens, c.passes_left) for c in plan.chunks] == [(128, 7)]
    assert _plan(pace, True, solos=(SoloState(100, 800, 7),)).chunks[0].tokens == 115


def test_a_mixed_round_joins_only_solos_that_widen_no_rows_cache():
    decoding = (SoloState(5, 0), SoloState(20, 0), SoloState(8, 0), SoloState(3, 9))
    plan = _plan(_pace(16, budget=16), True, rows=2, width=10, solos=decoding)
    assert plan.join == (0, 2) and plan.decode == (1,)
    # With no rows, the first takes the empty batch's place and sets its width.
    plan = _plan(_pace(16, budget=16), True, rows=0, width=0, solos=decoding)
    assert plan.join == (0,) and plan.decode == (1, 2)
    plan = _plan(_pace(16, budget=16), True, rows=0, width=0, solos=decoding[1:])
    assert plan.join == (0, 1) and plan.decode == ()


def test_a_separate_round_joins_every_solo_whose_prompt_is_in_before_the_step():
    solos = (SoloState(4, 2), SoloState(30, 0), SoloState(0, 40))
    plan = _plan(_pace(16, budget=16), False, rows=1, width=4, solos=solos)
    # Solo 0's last 2 tokens, then 14 of solo 2's; solos 0 and 1 become rows, in order.
    assert [(c.solo, c.tokens, c.last) for c in plan.chunks] == [(0, 2, True), (2, 14, False)]
    assert plan.join == (0, 1) and plan.decode == ()
    assert plan.work == 16
