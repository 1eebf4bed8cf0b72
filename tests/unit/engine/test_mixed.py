"""Mixed passes: the batch's step and other sequences' tokens in one forward pass compute
what each sequence computes alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.engine.batch import DecodeBatch
from app.engine.mixed import supports
from app.engine.solo import SoloSequence
from tests.support.scripted import ScriptedLM
from tests.support.tiny_models import MODEL_IDS
from tests.unit.engine.conftest import solo_logits

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [20]]  # left-padded rows of three lengths
LONG = [(7 * i + 3) % 90 + 5 for i in range(37)]
TOLERANCE = {"atol": 1e-4, "rtol": 0}


@pytest.mark.parametrize("model_id", MODEL_IDS)  # GPT-2, and Llama with grouped-query attention
def test_rows_and_a_chunked_prompt_in_one_pass_match_each_alone(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    assert supports(model)
    alone = [solo_logits(model, prompt, 9) for prompt in PROMPTS]
    long_alone = solo_logits(model, LONG, 3)
    batch = DecodeBatch(model)
    tokens = [int(row.argmax()) for row in batch.prefill(PROMPTS, [None] * 3).logits]
    solo = SoloSequence(model, LONG, None)
    last = None
    # Chunks of 10, 10, 10 and 7 prompt tokens ride on four steps of the rows; then the
    # solo decodes beside them, one token a pass.
    for step in range(1, 7):
        part = solo.part(10, last)
        rows, extra = batch.mixed_step(tokens, [part])
        solo.fed(part)
        for row in range(3):
            torch.testing.assert_close(rows.logits[row], alone[row][step], **TOLERANCE)
        assert len(extra) == (1 if part.wants_logits else 0)
        if step >= 4:  # the prompt is in: its next-token logits, as alone
            torch.testing.assert_close(extra[0], long_alone[step - 4], **TOLERANCE)
            last = int(extra[0].argmax())
        tokens = [int(row.argmax()) for row in rows.logits]
    assert solo.done == len(LONG) + 2 and len(batch) == 3


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_prompts_alone_in_a_mixed_pass_need_no_batch(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    batch = DecodeBatch(model)
    solos = [SoloSequence(model, prompt, None) for prompt in (LONG, PROMPTS[1])]
    rows, extra = batch.mixed_step([], [solo.part(100, None) for solo in solos])
    assert rows.logits.shape[0] == 0 and extra.shape[0] == 2
    torch.testing.assert_close(extra[0], solo_logits(model, LONG, 0)[0], **TOLERANCE)
    torch.testing.assert_close(extra[1], solo_logits(model, PROMPTS[1], 0)[0], **TOLERANCE)


def test_a_mixed_pass_of_only_a_prompts_inner_chunk_wants_no_logits(model_root):
    # With no rows, a chunk that does not end its prompt: no logits to keep at all (an
    # empty index once made the pass raise, and the group stopped mixing for good).
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()
    batch, solo = DecodeBatch(model), SoloSequence(model, LONG, None)
    part = solo.part(30, None)
    rows, extra = batch.mixed_step([], [part])
    solo.fed(part)
    assert rows.logits.shape[0] == 0 and extra.shape[0] == 0
    rows, extra = batch.mixed_step([], [solo.part(30, None)])
    torch.testing.assert_close(extra[0], solo_logits(model, LONG, 0)[0], **TOLERANCE)


def test_a_failed_mixed_pass_leaves_the_rows_cache_as_it_was(model_root, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()
    batch = DecodeBatch(model)
    tokens = [int(row.argmax()) for row in batch.prefill(PROMPTS, [None] * 3).logits]
    solo = SoloSequence(model, LONG, None)

    def fail(module, args):
        raise RuntimeError("out of memory, say")

    handle = model.base_model.h[1].register_forward_pre_hook(fail)  # in the second layer
    with pytest.raises(RuntimeError):
        batch.mixed_step(tokens, [solo.part(10, None)])
    handle.remove()
    solo.roll_back()
    # The first layer had filed its new keys; both caches are back to before the pass.
    assert batch._cache.layers[0].keys.shape[-2] == len(PROMPTS[1])
    assert solo.cache.layers[0].get_seq_length() == 0
    rows, _ = batch.mixed_step(tokens, [solo.part(10, None)])
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(rows.logits[row], solo_logits(model, prompt, 1)[1], **TOLERANCE)


def test_models_mixed_passes_cannot_run_on(model_root):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()
    model.set_attn_implementation("eager")
    assert not supports(model)  # its attention would not go through ours
    assert not supports(ScriptedLM({}))  # not a transformers model


def test_a_model_that_rejects_mixed_passes_is_served_by_passes_of_their_own(
    model_root, monkeypatch
):
    import app.engine.batch as batch_module
    from app.engine import GenerationJob, SamplingParams
    from app.engine.running import PassCounters, RunningGroup
    from tests.unit.engine.test_chunked_prefill import _Numbers

    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()
    calls = []

    def rejecting(*args, **kwargs):  # as model code that takes no positions for logits_to_keep
        calls.append(1)
        raise TypeError("logits_to_keep must be an int")

    monkeypatch.setattr(batch_module, "mixed_forward", rejecting)
    group = RunningGroup(model, PassCounters(), prefill_chunk=8)
    greedy = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    running, joining = GenerationJob(PROMPTS[1], greedy), GenerationJob(LONG, greedy)
    for job in (running, joining):
        job.begin(_Numbers(), frozenset(), torch.device("cpu"))
    assert group.add([running]) == []
    group.wait([joining])
    ended = []
    while group.busy:
        ended += group.advance()
    assert len(calls) == 1  # tried once; then chunks and steps took turns
    assert set(ended) == {running, joining} and not running.failed and not joining.failed
    tokens = [e.token_id for e in joining.events(1) if hasattr(e, "token_id")]
    assert tokens == [int(logits.argmax()) for logits in solo_logits(model, LONG, 11)]
