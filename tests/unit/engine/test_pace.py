"""PrefillPace and keys_per_token: pacing arithmetic, from plain numbers (no model, no torch)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.engine.pace import PrefillPace, keys_per_token

ROOT = Path(__file__).resolve().parents[3]


def test_pacing_and_planning_import_no_torch():
    # The `app` and `app.engine` packages themselves import Flask and torch (their public
    # names), so they are stood in for by bare packages: what is checked is the modules.
    code = (
        "import sys, types\n"
        "for name, path in (('app', 'app'), ('app.engine', 'app/engine')):\n"
        "    package = types.ModuleType(name)\n"
        "    package.__path__ = [path]\n"
        "    sys.modules[name] = package\n"
        "import app.engine.pace, app.engine.plan\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


class _Weight:
    def __init__(self, count: int) -> None:
        self.count = count

    def numel(self) -> int:
        return self.count


class _SizedModel:
    """What keys_per_token reads of a transformers model, as plain numbers."""

    def __init__(self, params: int, head: int | None, tied: bool, layers: int, hidden: int):
        self.config = SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden)
        self._params = params
        self._embedding = SimpleNamespace(weight=_Weight(1000))
        weight = self._embedding.weight if tied else _Weight(head or 0)
        self._head = None if head is None else SimpleNamespace(weight=weight)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return self._params

    def get_input_embeddings(self):
        return self._embedding

    def get_output_embeddings(self):
        return self._head


def test_keys_per_token_counts_the_layers_parameters_against_attention():
    # 2 x params FLOPs of matrix products against 4 x layers x hidden per key.
    assert keys_per_token(_SizedModel(80_000, None, False, 2, 100)) == 200
    # An untied LM head is no layer's parameter; a tied one was not counted to begin with.
    assert keys_per_token(_SizedModel(80_000, 40_000, False, 2, 100)) == 100
    assert keys_per_token(_SizedModel(80_000, 40_000, True, 2, 100)) == 200


def test_a_model_that_does_not_say_makes_positions_free():
    assert keys_per_token(object()) == math.inf  # no SizedModel
    assert keys_per_token(_SizedModel(80_000, None, False, 0, 100)) == math.inf
    assert PrefillPace(chunk=64).work(10_000, 10) == 10


def test_the_pace_counts_prompt_work_by_position():
    pace = PrefillPace(chunk=256, keys_per_token=1000)
    assert pace.budget() == pace.work(0, 256)  # nothing decodes yet: a whole chunk
    assert pace.work(0, 100) == 105  # positions 0..99 cost 1 + p / 1000 each: 5 extra
    assert pace.work(900, 100) == 195
    assert pace.tokens(900, 195) == 100 and pace.tokens(0, 105) == 100
    assert pace.tokens(0, 10_000) == 256  # never more than a chunk


def _rounds(pace: PrefillPace, fixed: float, per_unit: float, n: int) -> list[float]:
    """Run n rounds whose time is `fixed` + `per_unit` x work; the rounds' times."""
    times = []
    for _ in range(n):
        work = pace.budget()
        times.append(fixed + per_unit * work)
        pace.prefilled(work, times[-1])
    return times


@pytest.mark.parametrize(
    ("fixed", "per_unit"),
    [(0.030, 0.001), (0.045, 0.0009), (0.010, 0.0015)],  # CPUs: a step is a few dozen tokens
)
def test_rounds_with_prompt_work_grow_to_the_target_and_never_past_it(fixed, per_unit):
    pace = PrefillPace(chunk=512)
    for _ in range(5):
        pace.stepped(0.030)
    assert pace.probing() and pace.budget() == PrefillPace.PROBE_TOKENS
    target = PrefillPace.GAP_STEPS * 0.030
    times = _rounds(pace, fixed, per_unit, 12)
    assert not pace.probing()
    assert max(times) <= target + 1e-9  # never a round longer than GAP_STEPS steps
    assert times[-1] >= 0.95 * target  # and not much shorter, once measured
    assert times == sorted(times)  # from below


def test_on_a_gpu_the_chunk_caps_the_round_after_a_few_rounds():
    pace = PrefillPace(chunk=256)
    pace.stepped(0.020)  # a step costs about as much as hundreds of prompt tokens
    works = []
    for _ in range(6):
        works.append(pace.budget())
        pace.prefilled(works[-1], 0.020 + 0.00002 * works[-1])
    # The probe, then at most twice the most measured a round, up to the whole chunk.
    assert works[:2] == [32, 64] and works[-1] == 256
    assert all(b <= 2 * a for a, b in zip(works, works[1:], strict=False))


def test_one_slow_step_does_not_size_the_next_chunks():
    pace = PrefillPace(chunk=512)
    for seconds in (0.030, 0.031, 0.029, 0.030, 0.120):  # the last slowed by another process
        pace.stepped(seconds)
    pace.prefilled(32, 0.060)
    assert pace.budget() == pytest.approx(PrefillPace.GAP_STEPS * 0.030 / (0.060 / 32))


def test_rounds_in_one_pass_and_in_passes_of_their_own_are_measured_apart():
    pace = PrefillPace(chunk=512)
    pace.stepped(0.030)
    pace.prefilled(32, 0.050, mixed=True)
    assert pace.probing(mixed=False) and pace.budget(mixed=False) == PrefillPace.PROBE_TOKENS
    pace.prefilled(32, 0.070, mixed=False)  # the chunk's pass, then the step's
    assert pace.budget(mixed=True) > pace.budget(mixed=False)
    assert pace.budget(mixed=False) == pytest.approx(PrefillPace.GAP_STEPS * 0.030 / (0.070 / 32))


def test_a_token_that_costs_more_than_a_step_still_makes_progress():
    pace = PrefillPace(chunk=256)
    pace.stepped(0.050)
    pace.prefilled(1, 10.0)
    assert pace.budget() == PrefillPace.MIN_TOKENS


def test_a_round_its_budget_did_not_size_is_no_sample():
    pace = PrefillPace(chunk=256)
    pace.stepped(0.020)  # a GPU: a step costs about as much as hundreds of prompt tokens
    for _ in range(6):
        budget = pace.budget()
        pace.prefilled(budget, 0.020 + 0.00002 * budget, budget=budget)
    assert pace.budget() == 256
    # A 5-token prompt went in whole (it fits a chunk): its round is mostly the fixed part.
    pace.prefilled(5, 0.0201, budget=256)
    assert pace.budget() == 256
