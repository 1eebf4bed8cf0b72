"""DecodeBatch: rows decoded together compute what they would compute alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.engine.attention import HeadSelection
from app.engine.batch import DecodeBatch
from tests.support.tiny_models import MODEL_IDS
from tests.unit.engine.conftest import solo_logits

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_rows_match_their_solo_run_through_joins_and_leaves(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    solo = [solo_logits(model, prompt, 8) for prompt in PROMPTS]
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
    watch = HeadSelection(layers=(0, 1), heads=(2,))
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
    solo = [solo_logits(model, prompt, 4) for prompt in PROMPTS]
    batch = DecodeBatch(model)
    first = batch.prefill(PROMPTS[:2], [None, None])  # two arrive together...
    second = batch.prefill(PROMPTS[2:], [None, None])  # ...then two more, one longer
    logits = torch.cat([first.logits, second.logits])
    for step in range(5):
        for row in range(4):
            torch.testing.assert_close(logits[row], solo[row][step], atol=1e-4, rtol=0)
        if step < 4:
            logits = batch.step([int(row.argmax()) for row in logits]).logits


@pytest.fixture(scope="module")
def sliding_root(tmp_path_factory):
    """A tiny Mistral whose KV cache is a sliding window (4 tokens): it cannot be merged."""
    from transformers import MistralConfig, MistralForCausalLM

    from tests.support.tiny_models import build_llama_tokenizer

    root = tmp_path_factory.mktemp("sliding")
    tokenizer = build_llama_tokenizer()
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
        max_position_embeddings=512,
    )
    MistralForCausalLM(config).save_pretrained(root / "tiny-mistral")
    tokenizer.save_pretrained(root / "tiny-mistral")
    return root


def test_sliding_window_rows_prefilled_together_match_their_solo_runs(sliding_root):
    model = AutoModelForCausalLM.from_pretrained(sliding_root / "tiny-mistral").eval()
    solo = [solo_logits(model, prompt, 6) for prompt in PROMPTS[:2]]
    batch = DecodeBatch(model)
    logits = batch.prefill(PROMPTS[:2], [None, None]).logits
    assert not batch.mergeable  # later arrivals get a batch of their own
    for step in range(7):
        for row in range(2):
            torch.testing.assert_close(logits[row], solo[row][step], atol=1e-4, rtol=0)
        if step < 6:
            logits = batch.step([int(row.argmax()) for row in logits]).logits


def test_sliding_window_model_serves_overlapping_requests(sliding_root):
    import threading

    from app import create_app

    client = create_app({"model_root": sliding_root}).test_client()
    bodies = [
        {
            "model_id": "tiny-mistral",
            "prompt": prompt,
            "max_new_tokens": 150,
            "temperature": 0,
            "ignore_eos": True,
        }
        for prompt in ("A first prompt, longer than the window", "Second")
    ]
    alone = [client.post("/generate", json=body).get_json()["text"] for body in bodies]
    together = {}
    threads = [
        threading.Thread(
            target=lambda i=i, b=b: together.update(
                {i: client.post("/generate", json=b).get_json()["text"]}
            )
        )
        for i, b in enumerate(bodies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [together[0], together[1]] == alone
    # Unloaded, so that no worker thread outlives the test (torch aborts at exit otherwise).
    assert client.delete("/models/tiny-mistral").status_code == 200
