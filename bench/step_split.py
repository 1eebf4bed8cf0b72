"""Where a decoding round's time goes: the model's forward pass against everything else.

As gunicorn's gevent worker runs the engine: gevent's monkey-patching first, the model
loaded through the app's model cache (on whatever thread the cache loads on), jobs
submitted to the model's worker thread and read by a greenlet. Timers wrap the forward
passes (`DecodeBatch.step`, `DecodeBatch.mixed_step`) and the worker's rounds
(`RunningGroup.advance`); a round's rest is sampling, detokenizing, the stop strings,
posting events and planning. Prints per stream count: tok/s as the reader sees it, and the
median round, forward pass and rest, in ms.

Run from the repository root (any commit: it only uses long-standing entry points):
  .venv/bin/python -m bench.step_split [--model llmviz/shakespeare] [--streams 1 8]
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import gevent  # noqa: E402


def main() -> None:
    """Load the model as the server does, then run each stream count three times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llmviz/shakespeare")
    parser.add_argument("--model-root", default=str(REPO / "bench" / "models"))
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()

    from app import create_app, models
    from app.engine import batch, running
    from app.engine.events import TokenEvent
    from app.engine.job import GenerationJob
    from app.engine.sampling import SamplingParams

    spent: dict[str, list[float]] = {"forward": [], "round": []}

    def timed(kind: str, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[kind].append(time.perf_counter() - started)

        return wrapper

    batch.DecodeBatch.step = timed("forward", batch.DecodeBatch.step)
    batch.DecodeBatch.mixed_step = timed("forward", batch.DecodeBatch.mixed_step)
    running.RunningGroup.advance = timed("round", running.RunningGroup.advance)

    app = create_app({"model_root": args.model_root, "max_batch": max(args.streams)})
    lm = models.cache.get(models.resolve(args.model, app.config["LLMVIZ"]))
    tokenizer = lm.tokenizer
    params = SamplingParams(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)

    def run(streams: int) -> float:
        jobs = [
            GenerationJob(tokenizer(f"ROMEO {i}:")["input_ids"], params) for i in range(streams)
        ]
        started = time.perf_counter()
        for job in jobs:
            lm.enqueue(job)
        counts = [0] * streams

        def read(i: int) -> None:
            for event in jobs[i].events(5.0):
                counts[i] += isinstance(event, TokenEvent)

        gevent.joinall([gevent.spawn(read, i) for i in range(streams)])
        return sum(counts) / (time.perf_counter() - started)

    print(f"{args.model}, {args.tokens} tokens a stream, greedy; medians of 3 runs", flush=True)
    for streams in args.streams:
        run(streams)  # warm-up
        speeds = []
        for kind in spent:
            spent[kind].clear()
        for _ in range(3):
            speeds.append(run(streams))
        round_ms = statistics.median(spent["round"]) * 1e3
        forward_ms = statistics.median(spent["forward"]) * 1e3
        print(
            f"{streams:3d} streams: {statistics.median(speeds):7.1f} tok/s | round {round_ms:6.2f}"
            f" ms = forward {forward_ms:6.2f} + rest {round_ms - forward_ms:5.2f}",
            flush=True,
        )
    models.cache.clear()
    os._exit(0)  # the hub would wait on the model's thread, which no one stops in a script


if __name__ == "__main__":
    main()
