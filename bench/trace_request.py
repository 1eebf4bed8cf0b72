"""Which of app/'s modules one streamed request runs, and how many a token event crosses.

In process (Flask's test client, the demo model `llmviz/shakespeare`, warmed up by one
request first): a profiler hook (`sys.setprofile`, also in each of the
model's native threads, set as the engine starts them) records every call into a module
under app/ while a second `/generate/stream` request runs. Prints:
- the app modules that ran code for the request, on any thread;
- per token event: the app modules called on the request's thread between two SSE
  events (the way back from the job's mailbox to the response's bytes), and on the
  worker thread between two of the job's token events (sampling, decoding the text,
  posting the event): the median over the request's token events.

A structural count, not a timing: run it before and after a restructuring to compare.

Run from the repository root:  .venv/bin/python -m bench.trace_request [--api v1]
"""

from __future__ import annotations

import _thread
import argparse
import statistics
import sys
import threading
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import DEFAULT_ROOT  # noqa: E402,F401  (sets the offline environment)

APP = str(REPO / "app")


def module_of(filename: str) -> str | None:
    """`app.engine.job` for .../app/engine/job.py; None outside app/."""
    if not filename.startswith(APP):
        return None
    relative = Path(filename).relative_to(REPO).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


class Recorder:
    """Calls into app/ modules, by thread, as (sequence number, module)."""

    def __init__(self) -> None:
        self.on = False
        self.calls: dict[int, list[tuple[int, str]]] = defaultdict(list)
        self.marks: dict[int, list[int]] = defaultdict(list)  # where token events were posted
        self._n = 0

    def hook(self, frame, event, arg):  # noqa: ANN001 (the profiler's signature)
        if not self.on or event != "call":
            return
        module = module_of(frame.f_code.co_filename)
        if module is None:
            return
        self._n += 1
        ident = threading.get_ident()
        self.calls[ident].append((self._n, module))
        if frame.f_code.co_name == "_post_token":  # a token event leaves the worker's side
            self.marks[ident].append(self._n)

    def mark(self) -> None:
        """The request's thread has just received one SSE event."""
        self._n += 1
        self.marks[threading.get_ident()].append(self._n)


def per_event(calls: list[tuple[int, str]], marks: list[int]) -> list[set[str]]:
    """The distinct modules called between consecutive marks (one set per interval)."""
    return [
        {module for n, module in calls if start < n <= end}
        for start, end in zip(marks, marks[1:], strict=False)
    ]


def summary(sets: list[set[str]]) -> str:
    """The median count, each interval's count, and the modules of the median interval."""
    counts = [len(modules) for modules in sets]
    middle = sorted(sets, key=len)[len(sets) // 2]
    return f"median {statistics.median(counts)} {counts}\n    " + ", ".join(sorted(middle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", choices=["native", "v1"], default="native")
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    recorder = Recorder()
    sys.setprofile(recorder.hook)
    # The engine starts its native threads with _thread.start_new_thread (app/engine/
    # threads.py), which threading.setprofile does not reach: hook them before app/ is
    # imported and takes its own reference.
    start = _thread.start_new_thread

    def start_profiled(function, args, kwargs=None):  # noqa: ANN001
        def run(*inner):
            sys.setprofile(recorder.hook)
            return function(*inner, **(kwargs or {}))

        return start(run, args)

    _thread.start_new_thread = start_profiled

    from app import create_app

    client = create_app({}).test_client()
    if args.api == "v1":
        path = "/v1/completions"
        body = {"model": "llmviz/shakespeare", "prompt": "To be", "stream": True}
        body["max_tokens"], body["temperature"] = args.tokens, 0
    else:
        path = "/generate/stream"
        body = {"prompt": "To be", "max_new_tokens": args.tokens, "temperature": 0}
    b"".join(client.post(path, json=body).response)  # load and warm the model

    recorder.on = True
    response = client.post(path, json=body)
    for chunk in response.response:
        if b"data:" in chunk:
            recorder.mark()
    recorder.on = False
    sys.setprofile(None)

    request_thread = threading.get_ident()
    everywhere = sorted({m for calls in recorder.calls.values() for _, m in calls})
    print(f"{args.api}: {len(everywhere)} app modules ran code for the request:")
    print("  " + ", ".join(everywhere))
    back = per_event(recorder.calls[request_thread], recorder.marks[request_thread])
    print(f"request thread, modules per SSE event: {summary(back)}")
    for ident, marks in recorder.marks.items():
        if ident == request_thread or len(marks) < 2:
            continue
        forth = per_event(recorder.calls[ident], marks)
        print(f"worker thread, modules per token event: {summary(forth)}")


if __name__ == "__main__":
    main()
