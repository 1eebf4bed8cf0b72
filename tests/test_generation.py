"""DecodeBatch: rows decoded together compute what they would compute alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.generation import AttentionWatch, DecodeBatch
from tests.conftest import MODEL_IDS

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]]


def _alone(model, prompt, steps):
    """Greedy logits of one sequence decoded by itself."""
    batch = DecodeBatch(model)
    logits = [batch.prefill([prompt], [None]).logits[0]]
    for _ in range(steps):
        logits.append(batch.step([int(logits[-1].argmax())]).logits[0])
    return logits


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_rows_match_their_solo_run_through_joins_and_leaves(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    solo = [_alone(model, prompt, 8) for prompt in PROMPTS]
    batch = DecodeBatch(model)
    rows = []  # (prompt index, step index within that prompt's run)
    tokens = []
    for index in (0, 1):  # two rows start, the others join later
        logits = batch.prefill([PROMPTS[index]], [None]).logits[0]
        torch.testing.assert_close(logits, solo[index][0], atol=1e-4, rtol=0)
        rows.append([index, 0])
        tokens.append(int(logits.argmax()))
    for step in range(6):
        if step == 2:  # a longer prompt joins: the others are padded to its length
            logits = batch.prefill([PROMPTS[3]], [None]).logits[0]
            rows.append([3, 0])
            tokens.append(int(logits.argmax()))
        if step == 3:  # the first row leaves; a short one joins
            batch.remove([0])
            rows.pop(0)
            tokens.pop(0)
            logits = batch.prefill([PROMPTS[2]], [None]).logits[0]
            rows.append([2, 0])
            tokens.append(int(logits.argmax()))
        out = batch.step(tokens)
        assert out.logits.shape[0] == len(rows) == len(batch)
        for row, (index, done) in enumerate(rows):
            expected = solo[index][done + 1]
            torch.testing.assert_close(out.logits[row], expected, atol=1e-4, rtol=0)
            rows[row][1] += 1
            tokens[row] = int(out.logits[row].argmax())


def test_watched_rows_get_their_own_attention(model_root):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-llama").eval()
    watch = AttentionWatch(layers=(0, 1), heads=(2,))
    batch = DecodeBatch(model)
    first = batch.prefill([[5, 6, 7, 8, 9, 10]], [None])
    second = batch.prefill([[11, 12]], [watch])
    assert first.attention == [None]
    assert second.attention[0].shape == (2, 1, 2)
    step = batch.step([int(first.logits[0].argmax()), int(second.logits[0].argmax())])
    assert step.attention[0] is None
    row = step.attention[1]
    assert row.shape == (2, 1, 3)  # its 2 prompt tokens and the new one, no padding
    torch.testing.assert_close(row.sum(-1), torch.ones(2, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_prompts_prefilled_together_match_their_solo_runs(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    solo = [_alone(model, prompt, 4) for prompt in PROMPTS]
    batch = DecodeBatch(model)
    first = batch.prefill(PROMPTS[:2], [None, None])  # two arrive together...
    second = batch.prefill(PROMPTS[2:], [None, None])  # ...then two more, one longer
    logits = torch.cat([first.logits, second.logits])
    for step in range(5):
        for row in range(4):
            torch.testing.assert_close(logits[row], solo[row][step], atol=1e-4, rtol=0)
        if step < 4:
            logits = batch.step([int(row.argmax()) for row in logits]).logits
