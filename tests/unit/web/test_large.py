"""Client-sized answers: encoded a slice at a time, byte for byte as `jsonify` writes them."""

from __future__ import annotations

import json
import random

import pytest
from flask import jsonify

from app.web import large
from app.web.answers import TokenizeResponse


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
    real = large._dumps
    monkeypatch.setattr(large, "_dumps", lambda v: calls.append(v) or real(v))
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
