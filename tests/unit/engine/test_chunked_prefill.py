"""Chunked prefill: a joining prompt, fed a chunk at a time, computes what a one-piece
prefill computes, and the running rows keep stepping while it is fed: in the same pass
(mixed passes) where the model allows, else in turn."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.engine import DoneEvent, ErrorEvent, GenerationJob, ModelWorker, SamplingParams
from app.engine.attention import HeadSelection
from app.engine.batch import DecodeBatch
from app.engine.events import TokenEvent
from app.engine.pace import PrefillPace
from app.engine.running import PassCounters, RunningGroup
from app.engine.solo import SoloSequence
from tests.support.engine import submit_together
from tests.support.scripted import FAIL, LetterTokenizer, ScriptedLM
from tests.support.tiny_models import MODEL_IDS
from tests.unit.engine.conftest import solo_logits

LONG = [(7 * i + 3) % 90 + 5 for i in range(37)]
SHORT = [5, 6, 7]


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("chunk", [1, 5, 16, 36])
def test_a_chunked_prefill_matches_a_one_piece_prefill(model_root, model_id, chunk):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    solo = solo_logits(model, LONG, 4)
    prefill = SoloSequence(model, LONG, None)
    passes = 0
    step = None
    while step is None:
        step = prefill.advance(chunk)
        passes += 1
    assert passes == -(-len(LONG) // chunk) and prefill.remaining == 0
    torch.testing.assert_close(step.logits[0], solo[0], atol=1e-4, rtol=0)
    # Joined to a batch whose rows are shorter and longer, it decodes as it would alone.
    other = [*SHORT, *LONG, 9]
    other_solo = solo_logits(model, other, 5)
    batch = DecodeBatch(model)
    first = batch.prefill([other], [None]).logits[0]
    tokens = [int(batch.step([int(first.argmax())]).logits[0].argmax())]
    prefill.join(batch)
    tokens.append(int(step.logits[0].argmax()))
    for n in range(4):
        out = batch.step(tokens).logits
        torch.testing.assert_close(out[0], other_solo[n + 2], atol=1e-4, rtol=0)
        torch.testing.assert_close(out[1], solo[n + 1], atol=1e-4, rtol=0)
        tokens = [int(row.argmax()) for row in out]


def test_a_watched_prompt_gets_its_attention_from_the_last_chunk(model_root):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-llama").eval()
    watch = HeadSelection(layers=(0, 1), heads=(2,))
    whole = DecodeBatch(model).prefill([LONG], [watch])
    prefill = SoloSequence(model, LONG, watch)
    while (step := prefill.advance(10)) is None:
        pass
    assert step.attention[0].shape == (2, 1, len(LONG))
    torch.testing.assert_close(step.attention[0], whole.attention[0], atol=1e-5, rtol=0)


class _Recording:
    """A model wrapper that records each forward pass's input shape (rows, positions).

    It is no transformers model, so the engine runs no mixed passes on it: chunks and
    steps take turns, as on a model whose attention mixed passes do not support.
    """

    def __init__(self, model) -> None:
        self._model = model
        self.device, self.config = model.device, model.config
        self.passes: list[tuple[int, int]] = []

    def set_attn_implementation(self, implementation: str) -> None:
        self._model.set_attn_implementation(implementation)

    def __call__(self, input_ids, **kwargs):
        return self.forward(input_ids, **kwargs)

    def forward(self, input_ids, cache=None, **kwargs):
        self.passes.append(tuple(input_ids.shape))
        return self._model(input_ids, cache=cache, **kwargs)


class _Numbers:
    all_special_ids: list[int] = []

    def decode(self, ids, **kwargs) -> str:
        return " ".join(str(i) for i in ids)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [str(i) for i in ids]


def _tokens(job: GenerationJob) -> list[int]:
    return [e.token_id for e in job.events(10) if isinstance(e, TokenEvent)]


def _record_passes(model) -> list[tuple[int, int]]:
    """Record the input shape of every pass (mixed, plain or lean: app/engine/lean.py): each
    embeds its token ids first."""
    passes = []

    def record(module, args, kwargs):
        ids = args[0] if args else kwargs["input"]
        passes.append(tuple(ids.shape))

    model.get_input_embeddings().register_forward_pre_hook(record, with_kwargs=True)
    return passes


def _join_a_running_row(model, workers, passes) -> tuple[ModelWorker, list[int], list[int]]:
    """SHORT decodes 40 greedy tokens; LONG joins after its first and makes 3 (chunk 8).

    Returns the worker and each job's generated token ids (the running row's after its first).
    """
    worker = ModelWorker(model, _Numbers(), frozenset(), 8, 16, prefill_chunk=8)
    workers.append(worker)
    passes.clear()  # the worker's proof of its lean step (app/engine/lean.py): no request's
    greedy = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    running = GenerationJob(SHORT, greedy)
    worker.submit(running)
    events = running.events(10)
    next(events)  # it is decoding
    joining = GenerationJob(LONG, SamplingParams(max_new_tokens=3, temperature=0))
    worker.submit(joining)
    joined = _tokens(joining)
    return worker, joined, [e.token_id for e in events if isinstance(e, TokenEvent)]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_a_joining_prompt_rides_on_the_running_rows_steps(model_root, model_id, workers):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    passes = _record_passes(model)
    worker, joined, running_tokens = _join_a_running_row(model, workers, passes)
    # Each pass packs the running row's token and a chunk of at most 8 prompt tokens into
    # one sequence: the 37 tokens need 5 passes, and share their work about equally (a
    # later token attends to more keys, so later chunks hold no more tokens). The last
    # chunk's pass gives the joiner its first token. Longer than the running row, the
    # joiner then decodes beside it (its cache is not widened).
    first = next(i for i, shape in enumerate(passes) if shape[1] > len(SHORT))
    chunks = [columns - 1 for _, columns in passes[first : first + 5]]
    assert sum(chunks) == len(LONG) and chunks[0] == 8 and min(chunks) >= 6
    assert chunks == sorted(chunks, reverse=True)
    assert passes[first + 5 : first + 7] == [(1, 2)] * 2
    assert passes[0] == (1, len(SHORT))  # the running row's own prefill
    assert all(shape == (1, 1) for shape in passes[1:first] + passes[first + 7 :])
    solo = solo_logits(model, LONG, 2)
    assert joined == [int(logits.argmax()) for logits in solo]
    alone = solo_logits(model, SHORT, 39)
    assert running_tokens == [int(logits.argmax()) for logits in alone][1:]
    assert worker.stats()["prefills"] == 2


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_without_mixed_passes_chunks_and_steps_take_turns(model_root, model_id, workers):
    model = _Recording(AutoModelForCausalLM.from_pretrained(model_root / model_id).eval())
    worker, joined, running_tokens = _join_a_running_row(model, workers, model.passes)
    # The long prompt went in as chunks of at most 8 tokens, each followed by a step
    # of the running row; the last chunk's pass also gave the joiner its first token.
    chunks = [i for i, shape in enumerate(model.passes) if shape[1] > 1][1:]  # not the first
    assert [model.passes[i] for i in chunks] == [(1, 8)] * 4 + [(1, 5)]
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert model.passes[a + 1 : b] == [(1, 1)]
    assert model.passes[chunks[-1] + 1] == (2, 1)  # then both rows step together
    # And each generated what it generates alone.
    solo = solo_logits(model._model, LONG, 2)
    assert joined == [int(logits.argmax()) for logits in solo]
    alone = solo_logits(model._model, SHORT, 39)
    assert running_tokens == [int(logits.argmax()) for logits in alone][1:]  # after the first
    assert worker.stats()["prefills"] == 2


def test_an_idle_worker_still_prefills_a_burst_in_one_pass(model_root, workers):
    model = _Recording(AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval())
    worker = ModelWorker(model, _Numbers(), frozenset(), 8, 16, prefill_chunk=4)
    workers.append(worker)
    jobs = [GenerationJob(p, SamplingParams(2, temperature=0)) for p in (LONG, SHORT, LONG[:9])]
    submit_together(worker, jobs)
    for job in jobs:
        assert len(_tokens(job)) == 2
    assert model.passes[0] == (3, len(LONG))  # nobody was running: no reason to chunk


TOKENIZER = LetterTokenizer()


def _ids(text: str) -> list[int]:
    return TOKENIZER.encode(text)


def test_a_failed_chunk_ends_only_the_joining_request(workers):
    long = "abcdefgh" * 3
    lm = ScriptedLM({tuple(_ids("ha")): list(_ids("bbbbbbbbbbbb")), tuple(_ids(long)): [FAIL]})
    worker = ModelWorker(lm, TOKENIZER, frozenset(), 8, 16, prefill_chunk=5)
    workers.append(worker)
    running = GenerationJob(_ids("ha"), SamplingParams(12, temperature=0))
    worker.submit(running)
    events = running.events(10)
    next(events)
    joining = GenerationJob(_ids(long), SamplingParams(4, temperature=0))
    worker.submit(joining)
    failed = [e for e in joining.events(10) if e is not None]
    assert len(failed) == 1 and isinstance(failed[0], ErrorEvent)
    rest = [e for e in events if e is not None]
    assert "".join(e.text for e in rest if isinstance(e, TokenEvent)) == "b" * 11
    assert isinstance(rest[-1], DoneEvent) and rest[-1].finish_reason == "length"


def test_a_request_cancelled_while_its_prompt_goes_in_ends_cancelled():
    lm = ScriptedLM({tuple(_ids("ha")): list(_ids("b" * 30))})
    group = RunningGroup(lm, PassCounters(), prefill_chunk=2)
    running = GenerationJob(_ids("ha"), SamplingParams(30, temperature=0))
    joining = GenerationJob(_ids("abcdefgh"), SamplingParams(4, temperature=0))
    for job in (running, joining):
        job.begin(TOKENIZER, frozenset(), torch.device("cpu"))
    assert group.add([running]) == []
    group.wait([joining])
    for _ in range(2):  # two chunks of its prompt, two steps of the running row
        assert group.advance() == []
    assert group.solos[0][1].done == 4
    joining.cancel()
    assert group.advance() == [joining]
    assert not group.waiting and not group.solos and group.jobs == [running]
    assert lm.passes == [1] * 6  # the add, two chunks and three steps: no third chunk
    (done,) = [e for e in joining.events(1) if e is not None]
    assert done.finish_reason == "cancelled" and done.generated_tokens == 0


class _GivenPace(PrefillPace):
    """A probe's budget until a round with prompt work is measured, then `measured`'s."""

    def __init__(self, chunk: int, probe: float, measured: float) -> None:
        super().__init__(chunk)
        self.given, self.measured, self.rounds = probe, measured, 0

    def probing(self, mixed: bool = True) -> bool:
        return self.rounds == 0

    def budget(self, mixed: bool = True) -> float:
        return self.given if self.probing() else self.measured

    def prefilled(self, work: float, seconds: float, mixed: bool = True, budget=None) -> None:
        self.rounds += 1


def test_a_prompts_passes_are_planned_on_the_first_measured_budget(model_root):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()
    group = RunningGroup(model, PassCounters(), prefill_chunk=16)  # LONG (37) takes chunks
    group.pace = _GivenPace(16, probe=4, measured=10)
    greedy = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    running, joining = GenerationJob(SHORT, greedy), GenerationJob(LONG, greedy)
    for job in (running, joining):
        job.begin(_Numbers(), frozenset(), torch.device("cpu"))
    assert group.add([running]) == []
    group.wait([joining])
    group.advance()  # the probe: 4 tokens, and no plan made on them
    (solo,) = [solo for _, solo in group.solos]
    assert solo.done == 4 and solo.passes_left is None
    fed = [solo.done]
    while solo.remaining:
        group.advance()
        fed.append(solo.done)
    # The 33 tokens left, planned on the measured budget: 4 passes of about 8.
    assert [b - a for a, b in zip(fed, fed[1:], strict=False)] == [9, 8, 8, 8]


def _group_with_a_running_row(lm, chunk: int) -> tuple[RunningGroup, GenerationJob]:
    group = RunningGroup(lm, PassCounters(), prefill_chunk=chunk)
    running = GenerationJob(_ids("ha"), SamplingParams(30, temperature=0))
    running.begin(TOKENIZER, frozenset(), torch.device("cpu"))
    assert group.add([running]) == []
    return group, running


def test_rounds_of_separate_passes_time_the_rows_own_pass_as_a_step():
    # No mixed passes with this model: a round is the chunk's pass, then the rows' step.
    group, _ = _group_with_a_running_row(ScriptedLM({tuple(_ids("ha")): _ids("b" * 30)}), 5)
    joining = GenerationJob(_ids("abcdefgh" * 3), SamplingParams(4, temperature=0))
    joining.begin(TOKENIZER, frozenset(), torch.device("cpu"))
    group.wait([joining])  # before any round of the rows alone
    assert group.advance() == []
    assert group.solos[0][1].done == 5  # a chunk went in beside the step
    # The rows' pass in that round counts as a step, so the chunk's round was measured too.
    assert group.pace.step_seconds is not None and not group.pace.probing(mixed=False)


def test_a_round_where_a_pass_failed_is_no_sample():
    # The joiner's first chunk raises (its script fails once 5 tokens are in).
    lm = ScriptedLM({tuple(_ids("ha")): _ids("b" * 30), tuple(_ids("abc")): [1, 1, FAIL]})
    group, _ = _group_with_a_running_row(lm, 5)
    for _ in range(3):
        assert group.advance() == []
    assert group.pace.probing(mixed=False)  # steps measured, no prompt work yet
    joining = GenerationJob(_ids("abcdefgh" * 3), SamplingParams(4, temperature=0))
    joining.begin(TOKENIZER, frozenset(), torch.device("cpu"))
    group.wait([joining])
    assert group.advance() == [joining] and joining.failed
    assert group.pace.probing(mixed=False)  # the failed round's time was not taken as a rate
