"""The peer benchmark's table: medians of the runs, and this server's ratio to each peer.

Pure functions over `Load`s (bench/oai_load.py), so that they can be tested alone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.oai_load import Load

OURS = "this server"


@dataclass(frozen=True)
class Cell:
    """One server, one model, one stream count: medians over the runs (tokens/s, seconds)."""

    tokens_per_s: float
    first_token_s: float
    runs: int
    counted_by: str  # "usage", "chunks", or both joined by "+" if the runs differed
    short: int  # streams, over all the runs, that ended before max_tokens


def cell_of(runs: list[Load]) -> Cell:
    """Medians of the runs' aggregate rates and of their median first-token times.

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("no runs to summarise")
    return Cell(
        tokens_per_s=statistics.median(r.tokens_per_s for r in runs),
        first_token_s=statistics.median(r.first_token_s for r in runs),
        runs=len(runs),
        counted_by="+".join(sorted({r.counted_by for r in runs})),
        short=sum(r.short for r in runs),
    )


# model -> server -> streams -> the cell
Results = dict[str, dict[str, dict[int, Cell]]]


def ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs; None where theirs is zero."""
    return ours / theirs if theirs else None


def table(results: Results, servers: list[str], missing: dict[str, str]) -> str:
    """The table, one row per model, stream count and server, then the missing servers.

    Columns: tokens/s, median first-token time (ms), and this server's tokens/s over the
    row's (above 1: this server is faster) and its first-token time over the row's
    (below 1: this server answers sooner). A server with no cell for a row is left out.
    """
    header = (
        f"{'model':<22} {'streams':>7}  {'server':<20} {'tok/s':>8} {'1st tok ms':>10}"
        f" {'ours/it tok/s':>13} {'ours/it 1st':>11}  counted"
    )
    lines = [header, "-" * len(header)]
    for model, by_server in results.items():
        ours = by_server.get(OURS, {})
        counts = sorted({n for cells in by_server.values() for n in cells})
        for n in counts:
            for server in servers:
                cell = by_server.get(server, {}).get(n)
                if cell is None:
                    continue
                mine = None if server == OURS else ours.get(n)
                speed = ratio(mine.tokens_per_s, cell.tokens_per_s) if mine else None
                # ours / theirs for times: how much of their wait ours is
                wait = ratio(mine.first_token_s, cell.first_token_s) if mine else None
                note = cell.counted_by + (f", {cell.short} short" if cell.short else "")
                lines.append(
                    f"{model:<22} {n:>7}  {server:<20} {cell.tokens_per_s:>8.1f}"
                    f" {cell.first_token_s * 1000:>10.1f} {_times(speed):>13} {_times(wait):>11}"
                    f"  {note}"
                )
    for server, reason in missing.items():
        lines.append(f"missing: {server}: {reason}")
    return "\n".join(lines)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
