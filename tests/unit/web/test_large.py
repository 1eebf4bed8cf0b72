"""Client-sized answers: encoded a slice at a time, byte for byte as `jsonify` writes them."""

from __future__ import annotations

import json
import random

import pytest
import torch
from flask import jsonify

from app.analysis import inspection
from app.engine import tensors
from app.web import large
from app.web.answers import InspectResponse, TokenizeResponse


def _jsonify_text(app, value) -> str:
    with app.app_context():
        return jsonify(value).get_data(as_text=True)


@pytest.mark.parametrize("seed", range(5))
def test_sliced_encoding_is_json_dumps_exactly(monkeypatch, seed):
    monkeypatch.setattr(large, "SLICE", 3)  # every list longer than 3 goes in slices
    rng = random.Random(seed)

    def value(depth: int):
        kind = rng.choice(["int", "float", "str", "none", "bool", "list", "pairs", "dict"])
        if depth > 2 or kind == "int":
            return rng.randint(-5, 10**6)
        if kind == "float":
            return rng.uniform(-1, 1)
        if kind == "str":
            return rng.choice(["a", "é", "🦙", '"quoted"\n', ""])
        if kind in ("none", "bool"):
            return None if kind == "none" else rng.random() < 0.5
        if kind == "pairs":
            return [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(rng.randint(0, 8))]
        if kind == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 8))]
        return {rng.choice("zyxabc") + str(i): value(depth + 1) for i in range(rng.randint(0, 5))}

    answer = {f"k{i}": value(0) for i in range(6)}
    expected = json.dumps(answer, sort_keys=True, separators=(",", ":"))
    assert "".join(large.encode(answer)) == expected


def test_no_encoder_call_covers_more_than_a_slice(monkeypatch):
    monkeypatch.setattr(large, "SLICE", 4)
    calls = []
    real = large.Style.dumps
    monkeypatch.setattr(large.Style, "dumps", lambda self, v: calls.append(v) or real(self, v))
    "".join(large.encode({"ids": list(range(10)), "offsets": [[i, i + 1] for i in range(9)]}))
    assert max(len(v) for v in calls if isinstance(v, list)) <= 4


def test_tokenize_answers_byte_for_byte_as_before(app, client):
    """The plain-values answer is what `reply(TokenizeResponse(...))` had sent."""
    for body in (
        {"prompt": "Hello wörld 🦙  two spaces"},
        {"messages": [{"role": "user", "content": "Hi"}], "model_id": "tiny-llama"},
    ):
        response = client.post("/tokenize", json=body)
        assert response.status_code == 200, response.get_json()
        given = response.get_json()
        before = TokenizeResponse(**given).model_dump(mode="json", exclude_unset=True)
        assert response.get_data(as_text=True) == _jsonify_text(app, before)
        assert response.mimetype == "application/json"


def test_detokenize_answers_byte_for_byte_as_before(app, client):
    ids = client.post("/tokenize", json={"prompt": "Hello wörld 🦙"}).json["token_ids"]
    response = client.post("/detokenize", json={"token_ids": ids})
    assert response.status_code == 200
    assert response.get_data(as_text=True) == _jsonify_text(app, {"text": response.json["text"]})


def test_long_strings_and_flat_dicts_go_in_slices(monkeypatch):
    monkeypatch.setattr(large, "SLICE", 3)
    monkeypatch.setattr(large, "TEXT_SLICE", 4)
    calls = []
    real = large.Style.dumps
    monkeypatch.setattr(large.Style, "dumps", lambda self, v: calls.append(v) or real(self, v))
    answer = {"d": 'ab"cé🦙\n' * 3, "t": {str(i): f"t{i}é" for i in range(10)}}
    for style in (large.JSONIFY, large.DUMPS):
        expected = style.dumps(answer)
        calls.clear()
        assert "".join(large.encode(answer, style)) == expected
        assert max(len(v) for v in calls if isinstance(v, str | dict)) <= 4


EVERYTHING = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "Hello wörld 🦙  two spaces"},
        {"prompt": "The quick brown fox", "include": EVERYTHING, "top_k": 7},
        {"prompt": "a b c d e f", "include": EVERYTHING, "attention": {"format": "dense"}},
        {"model_id": "tiny-llama", "prompt": "Numbers 1 2 3", "include": EVERYTHING},
        {
            "model_id": "tiny-llama",
            "messages": [{"role": "user", "content": "Hi 🦙"}],
            "include": ["attention", "resid_norms"],
            "layers": [1],
            "attention": {"k": 2, "heads": [3, 0]},
        },
        {"token_ids": [5, 6, 7, 8], "include": ["logit_lens"], "top_k": 100},
    ],
)
def test_inspect_answers_byte_for_byte_as_before(monkeypatch, client, body):
    """The sliced answer is what `json.dumps(InspectResponse.model_validate(...).model_dump(
    mode="json", exclude_unset=True))` sent before, built from the same inspection."""
    results = []
    real = inspection.inspect
    monkeypatch.setattr(inspection, "inspect", lambda *a: results.append(real(*a)) or results[-1])
    monkeypatch.setattr(large, "SLICE", 5)  # slices even in these small answers
    monkeypatch.setattr(large, "TEXT_SLICE", 64)
    response = client.post("/inspect", json=body)
    assert response.status_code == 200, response.get_json()
    given = response.get_json()
    before: dict = {"model_id": given["model_id"], "token_ids": given["token_ids"]}
    if "tokens" in given:
        before["tokens"] = given["tokens"]
    before.update(_joined(results[0]))
    expected = json.dumps(InspectResponse.model_validate(before).model_dump(**_AS_BEFORE))
    assert response.get_data(as_text=True) == expected
    assert response.mimetype == "application/json"


_AS_BEFORE: dict = {"mode": "json", "exclude_unset": True}


def _joined(value):
    """`value` with each `TextPieces` joined into the one str `tensors.encode` had made."""
    if isinstance(value, tensors.TextPieces):
        return "".join(value)
    if isinstance(value, dict):
        return {key: _joined(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize("dtype", ["float16", "float32", "int32"])
@pytest.mark.parametrize("shape", [(0, 3), (5,), (3, 7), (300, 1000), (2, 3, 4)])
def test_tensor_pieces_join_into_the_whole_encoding(monkeypatch, dtype, shape):
    monkeypatch.setattr(tensors, "PIECE_BYTES", 3 * 1000)
    tensor = torch.randn(shape) * 1000
    pieces = tensors.encode_pieces(tensor, dtype)
    whole = tensors.encode(tensor, dtype)
    assert {**pieces, "data": "".join(pieces["data"])} == whole
    assert max(map(len, pieces["data"]), default=0) <= 4000
    assert "".join(large.encode(pieces, large.DUMPS)) == json.dumps(whole)


def test_many_small_items_take_few_encoder_calls_and_few_blocks(monkeypatch):
    """An OpenAI answer: thousands of tokens of 20 alternatives each. Encoded item by item,
    it was a million calls and a million writes (the hub was busy 35 s sending them)."""
    calls = []
    real = large.Style.dumps
    monkeypatch.setattr(large.Style, "dumps", lambda self, v: calls.append(v) or real(self, v))
    monkeypatch.setattr(large, "BLOCK", 1 << 16)
    top = [{"token": "é", "logprob": -1.5, "bytes": [195, 169]}] * 20
    answer = {"content": [{"token": "a", "logprob": -0.5, "top_logprobs": top}] * 2000}
    blocks = large.render(answer)
    body = b"".join(blocks)
    assert body == (json.dumps(answer, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert len(calls) < 200
    assert len(blocks) <= len(body) // (1 << 16) + 1
