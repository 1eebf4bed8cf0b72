"""A run and the loop that serves it, with scripted jobs: the one event reader (pings, the
client leaving, failures), cancelling, accounting, and the stream both APIs share."""

from __future__ import annotations

import time

import pytest

from app.engine import DoneEvent, ErrorEvent, TokenEvent
from app.errors import ClientClosedRequest, GenerationFailed, Overloaded, ShuttingDown
from app.models import ModelSpec
from app.web.serving import loop
from app.web.serving import run as run_module
from app.web.serving.run import Choice, Prompt, Run
from app.web.streams import StreamFramer
from app.web.v1.streams import DONE, ChunkFramer
from app.web.v1.views import CompletionView, Meta

PING = loop.PING


class ScriptedJob:
    """A stand-in for GenerationJob: it hands out `script` (None: a ping) and records
    whether it was cancelled, and how far it had been read by then."""

    def __init__(self, *script):
        self.script = list(script)
        self.prompt_ids = [1, 2]
        self.read = 0
        self.cancelled_after: int | None = None

    def events(self, ping_seconds):
        for event in self.script:
            if self.cancelled_after is not None:
                return  # a real job ends soon after it is cancelled
            if event is None:
                time.sleep(ping_seconds)  # silence, as long as a ping interval
            self.read += 1
            yield event

    def cancel(self, reason="cancelled"):
        if self.cancelled_after is None:
            self.cancelled_after = self.read


def tok(text):
    return TokenEvent(5, text, text, False)


def done(text="", reason="length"):
    return DoneEvent(reason, 2, 2, text, {"ttft_ms": 3.0, "queue_ms": 1.0, "total_ms": 9.0})


def make_run(*jobs):
    choices = [Choice(i, Prompt(0, "ab", [1, 2]), job) for i, job in enumerate(jobs)]
    return Run("m", choices, {})


def gone_after(calls):
    asked = []

    def client_gone():
        asked.append(1)
        return len(asked) > calls

    return client_gone


def test_the_reader_folds_events_and_passes_pings_on():
    job = ScriptedJob(tok("c"), None, tok("d"), done("e"))
    run = make_run(job)
    items = list(run.events(0.01))
    assert items[1] is None and [i[1] for i in items if i] == job.script[:1] + job.script[2:]
    assert run.choices[0].text == "cde" and run.choices[0].done is job.script[-1]


def test_the_reader_stops_and_cancels_as_soon_as_the_client_is_gone():
    job = ScriptedJob(tok("c"), tok("d"), None, tok("e"), done())
    run = make_run(job)
    assert len(list(run.events(0.01, gone_after(1)))) == 1
    assert run.client_left and job.cancelled_after == 2  # not read on to the end
    assert run.choices[0].done is None


def test_a_client_gone_during_silence_is_noticed_at_the_ping():
    job = ScriptedJob(None, None, None, done())
    run = make_run(job)
    assert list(run.events(0.01, gone_after(0))) == []
    assert job.cancelled_after == 1


def test_several_jobs_merge_into_one_reader():
    first, second = ScriptedJob(tok("a"), done("b")), ScriptedJob(tok("x"), done())
    run = make_run(first, second)
    items = list(run.events(0.01))
    by_choice = {0: [], 1: []}
    for item in items:
        if item is not None:
            by_choice[item[0].index].append(item[1])
    assert by_choice == {0: first.script, 1: second.script}
    assert [c.text for c in run.choices] == ["ab", "x"]


def test_a_job_failure_raises_and_cancels_every_job():
    failing = ScriptedJob(tok("a"), ErrorEvent("kaput"))
    other = ScriptedJob(*[None] * 1000, done())
    run = make_run(failing, other)
    with pytest.raises(GenerationFailed, match="kaput"):
        list(run.events(0.001))
    assert other.cancelled_after is not None and other.cancelled_after < 1000


def test_submit_queues_all_jobs_or_none(monkeypatch):
    queued = []

    def submit(lm, job):
        if len(queued) == 2:
            raise Overloaded("full")
        queued.append(job)

    monkeypatch.setattr(run_module.models, "submit", submit)
    jobs = [ScriptedJob(done()) for _ in range(3)]
    with pytest.raises(Overloaded):
        make_run(*jobs).submit(object())
    assert [job.cancelled_after for job in jobs] == [0, 0, None]


def test_a_run_accounts_for_itself_once(monkeypatch):
    observed = []
    monkeypatch.setattr(run_module.metrics, "observe_generation", lambda *a: observed.append(a))
    run = make_run(ScriptedJob(tok("c"), done("d")), ScriptedJob(tok("x"), done(reason="stop")))
    list(run.events(0.01))
    run.close()
    run.close()
    assert len(observed) == 2
    assert run.record == {
        "model": "m",
        "prompt_tokens": 2,  # one prompt, counted once
        "generated_tokens": 2,
        "choices": 2,
        "finish_reason": "length,stop",
        "prompt": ["ab"],
        "output": ["cd", "x"],
        "ttft_ms": 3.0,
        "queue_ms": 1.0,
    }


def test_fold_raises_what_ended_the_run_early_and_accounts_it():
    left = make_run(ScriptedJob(tok("c"), done()))
    with pytest.raises(ClientClosedRequest):
        loop.fold(left, 0.01, gone_after(0))
    assert left.record["finish_reason"] == "disconnected"
    stopped = make_run(ScriptedJob(tok("c"), done(reason="shutdown")))
    with pytest.raises(ShuttingDown):
        loop.fold(stopped, 0.01, lambda: False)
    failed = make_run(ScriptedJob(ErrorEvent("kaput")))
    with pytest.raises(GenerationFailed):
        loop.fold(failed, 0.01, lambda: False)
    assert failed.record["finish_reason"] == "error"


def test_the_stream_sends_headers_pings_frames_and_accounts():
    run = make_run(ScriptedJob(tok("c"), None, done("d")))
    chunks = list(loop.stream(run, StreamFramer(details=False), 0.01, lambda: False))
    assert chunks == [b"", b"data: c\n\n", PING, b"data: d\n\n"]
    assert run.record["finish_reason"] == "length" and run.record["output"] == "cd"


def test_a_stream_whose_client_left_sends_nothing_more_and_cancels_its_jobs():
    job = ScriptedJob(tok("c"), tok("d"), done())
    run = make_run(job)
    view = CompletionView(Meta("cmpl-1", 0, "m"), echo=False, top=None, scores={})
    chunks = list(loop.stream(run, ChunkFramer(view, True), 0.01, gone_after(0)))
    assert chunks == [b""]  # no chunk, no usage, no [DONE] for nobody
    assert job.cancelled_after == 1 and run.record["finish_reason"] == "disconnected"


def test_a_failure_mid_stream_is_the_framers_error_then_done():
    run = make_run(ScriptedJob(tok("c"), ErrorEvent("kaput")))
    view = CompletionView(Meta("cmpl-1", 0, "m"), echo=False, top=None, scores={})
    chunks = list(loop.stream(run, ChunkFramer(view, False), 0.01, lambda: False))
    assert chunks[-1] == DONE and b'"code": "generation_failed"' in chunks[-2]
    assert run.record["finish_reason"] == "error"


def test_a_shutdown_ends_a_native_stream_with_its_tail_then_an_error_event():
    run = make_run(ScriptedJob(tok("c"), done("d", "shutdown")))
    chunks = list(loop.stream(run, StreamFramer(details=False), 0.01, lambda: False))
    assert chunks[1:3] == [b"data: c\n\n", b"data: d\n\n"]
    assert chunks[3].startswith(b"event: error\n") and b"shutting_down" in chunks[3]
    assert len(chunks) == 4


def test_a_cold_stream_pings_while_the_model_loads_then_submits(monkeypatch):
    waits, queued = [], []

    def get(spec, timeout=None):
        waits.append(timeout)
        if len(waits) < 3:
            time.sleep(timeout)
            raise TimeoutError  # still loading
        return "loaded model"

    monkeypatch.setattr(loop.models.cache, "get", get)
    monkeypatch.setattr(run_module.models, "submit", lambda lm, job: queued.append((lm, job)))
    job = ScriptedJob(tok("c"), done())
    run = make_run(job)
    framer = StreamFramer(details=False)
    cold = ModelSpec("spec", "spec", local=False)
    chunks = list(loop.stream(run, framer, 0.25, lambda: False, cold=cold))
    assert chunks == [b"", PING, PING, b"data: c\n\n"]
    assert waits == [0.25] * 3 and queued == [("loaded model", job)]
