"""Per-token details in /generate answers: logprobs, timing, special flags, finish reasons."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.support.client import generate
from tests.support.tiny_models import MODEL_IDS


def test_without_details_the_answer_is_the_seed_shape(client):
    assert set(generate(client, prompt="Hi", max_new_tokens=3)) == {"text"}


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_greedy_logprobs_equal_the_models_own_log_softmax(client, model_root, model_id):
    prompt = "Once upon a time"
    answer = generate(
        client,
        model_id=model_id,
        prompt=prompt,
        max_new_tokens=12,
        temperature=0,
        ignore_eos=True,
        details=True,
        top_logprobs=5,
    )
    details = answer["details"]
    prompt_ids = client.post("/tokenize", json={"model_id": model_id, "prompt": prompt})
    prompt_ids = prompt_ids.get_json()["token_ids"]
    generated = [token["id"] for token in details["tokens"]]
    assert details["prompt_tokens"] == len(prompt_ids)
    assert details["generated_tokens"] == len(generated) == 12

    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + generated])).logits[0].float()
    expected = logits[len(prompt_ids) - 1 : -1].log_softmax(dim=-1)
    for step, token in enumerate(details["tokens"]):
        assert token["id"] == int(expected[step].argmax())  # greedy picked the top token
        assert token["logprob"] == pytest.approx(float(expected[step, token["id"]]), abs=1e-4)
        alternatives = token["top_logprobs"]
        assert len(alternatives) == 5
        assert alternatives[0]["id"] == token["id"]
        values = [alt["logprob"] for alt in alternatives]
        assert values == sorted(values, reverse=True)
        assert alternatives[0]["text"] == token["text"]


def test_details_timing_and_special_flags(client):
    details = generate(client, model_id="tiny-llama", prompt="Hi", max_new_tokens=5, details=True)[
        "details"
    ]
    assert details["finish_reason"] in ("length", "eos")
    timing = details["timing"]
    assert set(timing) == {"queue_ms", "prefill_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    assert 0 <= timing["queue_ms"] <= timing["ttft_ms"] <= timing["total_ms"]
    assert timing["prefill_ms"] >= 0 and timing["tokens_per_s"] > 0
    assert all(isinstance(token["special"], bool) for token in details["tokens"])


def test_finish_reason_length(client):
    details = generate(client, prompt="Hi", max_new_tokens=4, ignore_eos=True, details=True)[
        "details"
    ]
    assert details["finish_reason"] == "length"
