"""The demo models kept in the repository: their ids, and that they do their job."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import create_app
from app.models import list_demo
from scripts.train_nano_sort import split_prompts, to_text
from scripts.train_shakespeare import (
    EOT,
    load_corpus,
    split_corpus,
    token_stream,
    validation_sample_loss,
)

REPO = Path(__file__).resolve().parents[3]

NANO_SORT = "llmviz/nano-sort"


@pytest.fixture
def demo_client(tmp_path, fresh_cache):
    """A server with an empty model root: only the demo models (and the hub) exist."""
    return create_app({"model_root": tmp_path}).test_client()


def test_demo_models_are_listed_before_they_are_loaded(demo_client):
    body = demo_client.get("/models").get_json()
    assert NANO_SORT in body["available"] and body["loaded"] == []
    assert set(list_demo()) <= set(body["available"])


def test_nano_sort_tokens_round_trip(demo_client):
    tokens = demo_client.post("/tokenize", json={"model_id": NANO_SORT, "prompt": "CBABBC"})
    body = tokens.get_json()
    assert body["tokens"] == list("CBABBC") and body["token_ids"] == [2, 1, 0, 1, 1, 2]
    back = demo_client.post("/detokenize", json={"model_id": NANO_SORT, "token_ids": [2, 1, 0]})
    assert back.get_json()["text"] == "CBA"


def test_nano_sort_sorts_held_out_sequences(demo_client):
    _, held_out = split_prompts()  # the prompts its training never saw
    sample = random.Random(0).sample(held_out, 100)
    right = 0
    for prompt in sample:
        body = {"model_id": NANO_SORT, "prompt": to_text(prompt), "max_new_tokens": 6}
        body.update(temperature=0, return_full_text=False)
        answer = demo_client.post("/generate", json=body).get_json()["text"]
        right += answer == to_text(sorted(prompt))
    assert right >= 99, f"{right} of 100 held-out sequences sorted"
    example = {"model_id": NANO_SORT, "prompt": "CBABBC", "max_new_tokens": 6, "temperature": 0}
    assert demo_client.post("/generate", json=example).get_json()["text"] == "CBABBCABBBCC"


SHAKESPEARE = REPO / "demo_models" / "shakespeare"


def test_the_default_model_speaks_gpt2_s_ids(demo_client):
    body = demo_client.post("/tokenize", json={"prompt": "Hello world"}).get_json()
    assert body["token_ids"] == [15496, 995] and body["tokens"] == ["Hello", " world"]
    assert demo_client.get("/models").get_json()["default_model"] == "llmviz/shakespeare"


def test_shakespeare_s_validation_loss_is_the_one_on_its_card():
    """The committed weights give the validation loss their card records.

    The full figure (`validation_loss`, minutes on a busy 2-core CPU) and the one on a fixed
    sample of its windows (`validation_sample_loss`: every 16th, seconds) were computed from
    the same saved weights, whose SHA-256 the card records too. The hash ties the card to
    these exact weights (a loss barely moves for a small corruption: noise of 30% of one MLP
    matrix moves the sample by 6e-5 nats); recomputing the sample checks that these weights,
    this tokenizer and this transformers give the recorded loss; counting the held-out tokens
    and characters (tokenizing only) checks the data the full figure was measured on.
    """
    results = json.loads((SHAKESPEARE / "training_results.json").read_text())
    card, sample_card = results["validation"], results["validation_sample"]
    weights = (SHAKESPEARE / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == results["weights_sha256"], "not the weights"
    tokenizer = AutoTokenizer.from_pretrained(SHAKESPEARE)
    model = AutoModelForCausalLM.from_pretrained(SHAKESPEARE, dtype=torch.float32).eval()
    _, held_out = split_corpus(load_corpus())  # two whole plays never trained on
    assert sum(len(work.text) for work in held_out) == card["chars"]
    targets = token_stream(tokenizer, held_out)[1:]  # what validation_loss predicts and counts
    assert int((targets != tokenizer.convert_tokens_to_ids(EOT)).sum()) == card["tokens"]

    measured = validation_sample_loss(model, tokenizer, held_out, every=sample_card["every"])
    assert (measured["windows"], measured["tokens"]) == (
        sample_card["windows"],
        sample_card["tokens"],
    )
    # Float32 on any CPU: only the order of the sums may differ (bit-identical on the machine
    # that recorded it). Other weights move it by far more: two blocks' MLP output matrices
    # swapped, by 0.35 nats.
    assert abs(measured["nats_per_token"] - sample_card["nats_per_token"]) <= 1e-4
    # The sample stands for the whole: near the full figure, which is as good as the card says.
    assert abs(sample_card["nats_per_token"] - card["nats_per_token"]) <= 0.25
    assert card["nats_per_char"] <= 1.7
