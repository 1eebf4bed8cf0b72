"""Failure isolation in a batch, driven by the scripted fake model (no torch weights)."""

from __future__ import annotations

import threading

from app.engine import DoneEvent, ErrorEvent, GenerationJob, ModelTask, ModelWorker, SamplingParams
from tests.support.scripted import FAIL, LetterTokenizer, ScriptedLM

GREEDY = SamplingParams(max_new_tokens=6, temperature=0)
TOKENIZER = LetterTokenizer()


def ids(text: str) -> tuple[int, ...]:
    return tuple(TOKENIZER.encode(text))


def run_together(lm: ScriptedLM, prompts: list[str], params=GREEDY):
    """Start a worker, queue every prompt while it is busy (so they share one prefill),
    and return each job's events and the worker."""
    worker = ModelWorker(lm, TOKENIZER, frozenset(), max_active=8, max_queue=16)
    gate = threading.Event()
    blocker = ModelTask(lambda model, tokenizer: gate.wait(10))
    worker.submit(blocker)
    jobs = [GenerationJob(list(ids(p)), params) for p in prompts]
    for job in jobs:
        worker.submit(job)
    gate.set()
    assert blocker.result() is True
    events = [[e for e in job.events(10) if e is not None] for job in jobs]
    return events, worker


def text(events) -> str:
    return "".join(e.text for e in events if not isinstance(e, ErrorEvent))


def test_a_failure_mid_batch_ends_only_that_request(workers):
    lm = ScriptedLM({ids("ab"): [*ids("cde"), FAIL], ids("cd"): list(ids("hgfedc"))})
    (failing, mate, third), worker = run_together(lm, ["ab", "cd", "ee"])
    workers.append(worker)
    # Token, token, token, failure: the request ends with an error after its three tokens.
    assert text(failing) == "cde"
    assert isinstance(failing[-1], ErrorEvent)
    assert "ScriptedFailure" in failing[-1].message
    # Its batch-mates finish with exactly their scripted text.
    assert text(mate) == "hgfedc" and mate[-1] == DoneEvent("length", 2, 6, "", mate[-1].timing)
    assert text(third) == "eeeeee" and isinstance(third[-1], DoneEvent)
    # They shared passes before the failure, were stepped alone once, then batched again.
    assert lm.passes[:4] == [3, 3, 3, 3]
    assert lm.passes[4:7] == [1, 1, 1]
    assert set(lm.passes[7:]) == {2}


def test_the_worker_keeps_serving_after_a_failure(workers):
    lm = ScriptedLM({ids("ab"): [*ids("c"), FAIL], ids("ba"): list(ids("hhh"))})
    (failing,), worker = run_together(lm, ["ab"])
    workers.append(worker)
    assert isinstance(failing[-1], ErrorEvent)
    job = GenerationJob(list(ids("ba")), SamplingParams(max_new_tokens=3, temperature=0))
    worker.submit(job)
    later = [e for e in job.events(10) if e is not None]
    assert text(later) == "hhh" and later[-1].finish_reason == "length"


def test_a_failed_prefill_is_retried_per_request(workers):
    # FAIL at step 0: the forward pass that would give the first token (the prefill) raises.
    lm = ScriptedLM({ids("ab"): [FAIL], ids("cd"): list(ids("aaa"))})
    (failing, mate), worker = run_together(lm, ["ab", "cd"], SamplingParams(3, temperature=0))
    workers.append(worker)
    assert failing == [failing[0]] and isinstance(failing[0], ErrorEvent)
    assert text(mate) == "aaa" and mate[-1].finish_reason == "length"
    assert lm.passes[:3] == [2, 1, 1]  # together, then each alone
    assert worker.stats()["prefills"] == 1  # only the prefill that succeeded counts


def test_a_lone_request_that_fails_ends_with_an_error(workers):
    lm = ScriptedLM({ids("a"): [FAIL]})
    (events,), worker = run_together(lm, ["a"])
    workers.append(worker)
    assert len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert lm.passes == [1]  # a lone row is not retried
