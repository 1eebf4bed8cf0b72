"""bench/peer_report.py: the peer benchmark's medians and ratios (no server runs)."""

from __future__ import annotations

import pytest

from bench.oai_load import Load
from bench.peer_report import OURS, cell_of, ratio, table


def load(tokens: int, wall_s: float, first_token_s: float, counted_by: str = "usage") -> Load:
    return Load(
        streams=8,
        wall_s=wall_s,
        tokens=tokens,
        counted_by=counted_by,
        first_token_s=first_token_s,
        short=0,
    )


def test_a_cell_is_the_median_of_the_runs_rates_and_first_token_times():
    cell = cell_of([load(1600, 4.0, 0.3), load(1600, 2.0, 0.1), load(1600, 3.2, 0.2)])
    assert cell.tokens_per_s == pytest.approx(500.0)  # 400, 800, 500 tok/s
    assert cell.first_token_s == pytest.approx(0.2)
    assert (cell.runs, cell.counted_by, cell.short) == (3, "usage", 0)


def test_a_cell_says_when_its_runs_were_counted_differently():
    assert cell_of([load(10, 1, 0.1, "chunks"), load(10, 1, 0.1)]).counted_by == "chunks+usage"
    with pytest.raises(ValueError):
        cell_of([])


def test_the_table_gives_this_servers_ratio_to_each_peer_and_names_the_missing():
    results = {
        "m": {
            OURS: {8: cell_of([load(1000, 2.0, 0.05)])},  # 500 tok/s
            "vllm": {8: cell_of([load(1000, 4.0, 0.10)])},  # 250 tok/s
        }
    }
    lines = table(results, [OURS, "vllm"], {"llama.cpp on m": "not built"}).splitlines()
    ours, vllm = lines[2].split(), lines[3].split()
    assert ours[4:8] == ["500.0", "50.0", "-", "-"]  # "this server" is two words
    assert vllm[3:7] == ["250.0", "100.0", "2.00x", "0.50x"]  # twice the rate, half the wait
    assert lines[-1] == "missing: llama.cpp on m: not built"
    assert ratio(1.0, 0.0) is None
