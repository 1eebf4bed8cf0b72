"""Scoring a text (echo's prompt logprobs) against transformers, in chunks past 256 rows."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.analysis import scoring
from tests.support.tiny_models import MODEL_IDS


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_scores_are_log_softmax_of_the_previous_position(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_root / model_id)
    ids = tokenizer("The cat sat on the mat. " * 30)["input_ids"][:300]
    assert len(ids) > 257  # two chunks
    scored = scoring.score(model, tokenizer, ids, top_n=3)
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert scored.logprobs[0] is None and scored.top[0] == ()
    assert len(scored.logprobs) == len(scored.top) == len(ids)
    for i in range(1, len(ids)):
        assert scored.logprobs[i] == pytest.approx(expected[i - 1, ids[i]].item(), abs=1e-5)
        values, top_ids = expected[i - 1].topk(3)
        assert [t for t, _ in scored.top[i]] == top_ids.tolist()
        assert [v for _, v in scored.top[i]] == pytest.approx(values.tolist(), abs=1e-5)
    assert set(scored.texts) == {t for pairs in scored.top for t, _ in pairs}


def test_one_token_has_nothing_to_score(model_root):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-gpt2")
    scored = scoring.score(model, tokenizer, [5], top_n=2)
    assert (scored.logprobs, scored.top, scored.texts) == ([None], [()], {})
