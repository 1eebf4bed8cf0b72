"""This server against the real engines on the same machine: vLLM's CPU build, llama.cpp's
`llama-server` and `transformers serve`.

The same client (bench/oai_load.py: N concurrent `/v1/completions` streams, greedy,
`--max-tokens` new tokens past end-of-sequence) against each server on each model, one
server running at a time, at each stream count; each figure is the median of `--runs`
runs, and the machine's load average is printed before every run. Prints, per model and
stream count, tokens/s (all streams together), the median time to first token and this
server's ratios to each peer (bench/peer_report.py). A peer that is not built, or that
cannot start here, is reported as missing, with why; the others are still measured.

Models: the demo `llmviz/shakespeare` and GPT-2 small's shape with random weights
(/tmp/models/gpt2-small-random). Peers live in /tmp/peers (bench/peer_setup.py).

Run from the repository root, on a machine otherwise idle:
    .venv/bin/python -m bench.peers setup      # build the peers (~20 min, ~6 GB), once
    .venv/bin/python -m bench.peers            # measure (about 20 minutes)
    .venv/bin/python -m bench.peers --servers llama.cpp --streams 1 --max-tokens 8 --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.oai_load import Load, run_load
from bench.peer_report import Results, cell_of, table
from bench.peer_servers import MODEL_SET, SERVERS, BenchModel, Server, StartFailed, running
from bench.peer_setup import ensure_gpt2_small, setup


def load_average() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def measure(
    server: Server, model: BenchModel, streams: list[int], max_tokens: int, runs: int
) -> dict[int, list[Load]]:
    """Start `server` on `model`, warm it up, and run each stream count `runs` times.

    Raises:
        StartFailed: the server did not start.
        RuntimeError: a stream failed.
    """
    measured: dict[int, list[Load]] = {}
    with running(server, model) as base:
        name = server.model_name(model)
        # Warm-up at the largest batch: first-use costs (allocations, kernels chosen per
        # shape, a lazy model load) are not what is measured.
        run_load(base, name, max(streams), min(max_tokens, 16), server.spelling)
        for n in streams:
            for attempt in range(runs):
                where = f"{server.name} | {model.label} | {n} streams | run {attempt + 1}/{runs}"
                print(f"[{where}] load average {load_average()}", end="", flush=True)
                load = run_load(base, name, n, max_tokens, server.spelling)
                short = f", {load.short} streams short" if load.short else ""
                print(
                    f" -> {load.tokens_per_s:.1f} tok/s, first token"
                    f" {load.first_token_s * 1000:.0f} ms ({load.counted_by}{short})",
                    flush=True,
                )
                measured.setdefault(n, []).append(load)
    return measured


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; build the peers, or measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["run", "setup"], default="run")
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--models", nargs="+", choices=list(MODEL_SET), default=list(MODEL_SET))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the figures and every run here")
    args = parser.parse_args(argv)

    if args.command == "setup":
        failed = setup()
        for peer, cause in failed.items():
            print(f"missing: {peer}: {cause}")
        print("peers ready" if not failed else f"{len(failed)} peer(s) failed to build")
        return 1 if failed else 0

    ensure_gpt2_small()
    servers = [s for s in SERVERS if s in args.servers]  # this server first, as in the table
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs; {args.max_tokens} new"
        f" tokens a stream, greedy, past end-of-sequence; medians of {args.runs} runs"
    )
    # SIGTERM as Ctrl-C: a run stopped early still stops its server and prints what it has.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    done = Done()
    try:
        for key in args.models:
            for name in servers:
                compare_one(done, SERVERS[name], MODEL_SET[key], args)
                if args.json:
                    done.write(args.json)
    except KeyboardInterrupt:
        print("\ninterrupted: the table holds the servers measured so far")
    print()
    print(table(done.results, servers, done.missing))
    return 0


@dataclass
class Done:
    """What has been measured so far, and what could not be."""

    results: Results = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    every_run: list[dict] = field(default_factory=list)

    def write(self, path: str) -> None:
        """The figures and every run, as JSON."""
        figures = {
            "cells": {
                model: {s: {n: asdict(c) for n, c in cells.items()} for s, cells in by.items()}
                for model, by in self.results.items()
            },
            "missing": self.missing,
            "runs": self.every_run,
        }
        with open(path, "w") as out:
            json.dump(figures, out, indent=2)


def compare_one(done: Done, server: Server, model: BenchModel, args: argparse.Namespace) -> None:
    """Measure `server` on `model` into `done`, or note there why it could not be."""
    why = server.missing(model)
    if why is None:
        try:
            measured = measure(server, model, args.streams, args.max_tokens, args.runs)
        except (StartFailed, RuntimeError) as error:
            cause = f" ({error.__cause__!r})" if error.__cause__ else ""
            why = f"{error}{cause}"
        else:
            cells = {n: cell_of(loads) for n, loads in measured.items()}
            done.results.setdefault(model.label, {})[server.name] = cells
            done.every_run += [
                {"model": model.label, "server": server.name, **asdict(load)}
                for loads in measured.values()
                for load in loads
            ]
    if why is not None:
        done.missing[f"{server.name} on {model.label}"] = why
        print(f"[{server.name} | {model.label}] missing: {why}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
