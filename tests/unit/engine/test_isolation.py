"""Failure isolation in a running group, driven by the scripted fake model (no torch weights)."""

from __future__ import annotations

import torch

from app.engine import DoneEvent, ErrorEvent, GenerationJob, ModelWorker, SamplingParams
from app.engine.running import PassCounters, RunningGroup
from app.engine.sampling import BatchSampler
from tests.support.engine import submit_together
from tests.support.scripted import FAIL, LetterTokenizer, ScriptedLM

GREEDY = SamplingParams(max_new_tokens=6, temperature=0)
TOKENIZER = LetterTokenizer()


def ids(text: str) -> tuple[int, ...]:
    return tuple(TOKENIZER.encode(text))


def run_together(lm: ScriptedLM, prompts: list[str], params=GREEDY):
    """Start a worker, queue every prompt while it is busy (so they share one prefill),
    and return each job's events and the worker."""
    worker = ModelWorker(lm, TOKENIZER, frozenset(), max_active=8, max_queue=16)
    jobs = [GenerationJob(list(ids(p)), params) for p in prompts]
    submit_together(worker, jobs)
    return [until_done(job) for job in jobs], worker


def until_done(job: GenerationJob, seconds: int = 30) -> list:
    """The job's events up to its last; fails (instead of hanging) after `seconds` silent."""
    events, silent = [], 0
    for event in job.events(1):
        if event is None:
            silent += 1
            assert silent < seconds, f"no event for {seconds} s: the worker is stuck"
            continue
        events.append(event)
    return events


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
    later = until_done(job)
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


def test_a_fault_outside_any_pass_ends_its_requests_and_the_worker_serves_on(workers, monkeypatch):
    lm = ScriptedLM({ids("ab"): list(ids("cccccc")), ids("ba"): list(ids("hhh"))})
    advance = RunningGroup.advance
    faults = iter([RuntimeError("a bug of ours")])

    def advance_with_a_fault(self):
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return advance(self)

    monkeypatch.setattr(RunningGroup, "advance", advance_with_a_fault)
    (first, second), worker = run_together(lm, ["ab", "ab"])
    workers.append(worker)
    for events in (first, second):  # both were rows of the faulty round: both end, with it
        assert isinstance(events[-1], ErrorEvent) and "a bug of ours" in events[-1].message
    assert worker.stats()["active"] == 0
    job = GenerationJob(list(ids("ba")), SamplingParams(max_new_tokens=3, temperature=0))
    worker.submit(job)
    later = until_done(job)
    assert text(later) == "hhh" and later[-1].finish_reason == "length"


def test_a_request_whose_setup_fails_ends_alone(workers, monkeypatch):
    lm = ScriptedLM({ids("ab"): list(ids("ccc")), ids("ba"): list(ids("hhh"))})
    begin = GenerationJob.begin

    def begin_failing_for_ba(self, tokenizer, eos_ids, device):
        if self.prompt_ids == list(ids("ba")):
            raise ValueError("this prompt's decoder could not start")
        return begin(self, tokenizer, eos_ids, device)

    monkeypatch.setattr(GenerationJob, "begin", begin_failing_for_ba)
    (failing, mate), worker = run_together(lm, ["ba", "ab"], SamplingParams(3, temperature=0))
    workers.append(worker)
    assert failing == [failing[0]] and "could not start" in failing[0].message
    assert text(mate) == "ccc" and mate[-1].finish_reason == "length"


def test_when_sampling_the_rows_together_fails_each_row_samples_alone(monkeypatch):
    scripts = {
        ids("ab"): list(ids("cde")),
        ids("cd"): list(ids("hgf")),
        ids("ee"): list(ids("aba")),
    }
    lm = ScriptedLM(scripts)
    jobs = [GenerationJob(list(prompt), SamplingParams(3, temperature=0)) for prompt in scripts]
    for job in jobs:
        job.begin(TOKENIZER, frozenset(), torch.device("cpu"))
    choose, calls = BatchSampler.choose, []

    def together_fails_once(self, logits, samplers):
        calls.append(len(samplers))
        if len(calls) == 1:
            raise RuntimeError("a fault of the batched sampling, no row's own")
        return choose(self, logits, samplers)

    monkeypatch.setattr(BatchSampler, "choose", together_fails_once)
    group = RunningGroup(lm, PassCounters())
    assert group.add(jobs) == []  # the prefill's tokens: chosen together, which raised
    assert calls[0] == 3 and group.jobs == jobs  # every row got its first token anyway
    ended = []
    while group.busy:
        ended += group.advance()
    assert ended == jobs and not any(job.failed for job in jobs)
    for job, script in zip(jobs, scripts.values(), strict=True):
        assert text(until_done(job)) == TOKENIZER.decode(script)  # what each makes alone


def test_a_failed_forward_pass_spoils_the_rounds_timing_and_a_failed_sampling_does_not():
    from app.engine.isolation import Failed, isolated
    from app.engine.pace import RoundRecord

    def broken():
        raise RuntimeError("out of memory")

    job = GenerationJob(list(ids("ab")), GREEDY)
    sampling = RoundRecord()
    # A sampling call that failed: its rows choose alone; the passes ran as planned.
    assert isolated(sampling, [job], broken, lambda exc: [], forward_pass=False) == Failed([])
    assert sampling.clean and not job.failed
    forward = RoundRecord()
    assert isolated(forward, [job], broken) == Failed([job])
    assert not forward.clean and job.failed
