"""A generation that fails after it started, seen through both generation endpoints."""

from __future__ import annotations

import json

import pytest

from app import create_app, models
from app.engine import ModelWorker
from app.models import LoadedModel, ModelProfile
from tests.support.scripted import FAIL, LetterTokenizer, ScriptedLM

TOKENIZER = LetterTokenizer()
REQUEST = {"model_id": "scripted", "prompt": "ab", "max_new_tokens": 6, "temperature": 0}


@pytest.fixture
def client(fresh_cache, model_root, monkeypatch):
    """An app whose model "scripted" says c, d, e and then fails."""

    def load(spec, settings, profile=None):
        lm = ScriptedLM({tuple(TOKENIZER.encode("ab")): [*TOKENIZER.encode("cde"), FAIL]})
        worker = ModelWorker(lm, TOKENIZER, frozenset(), settings.max_batch, settings.max_queue)
        profile = ModelProfile(spec, TOKENIZER, 64, n_layers=1, n_heads=1)
        return LoadedModel(profile, worker, frozenset(), 0.0)

    monkeypatch.setattr(fresh_cache, "loader", load)
    app = create_app({"model_root": model_root})
    models.cache.get(models.resolve("scripted", app.config["LLMVIZ"]))
    return app.test_client()


def test_a_stream_sends_its_tokens_then_an_error_event(client):
    response = client.post("/generate/stream", json={**REQUEST, "return_full_text": False})
    assert response.status_code == 200
    events = response.get_data(as_text=True).split("\n\n")
    assert events[:3] == ["data: c", "data: d", "data: e"]
    name, data = events[3].split("\n")
    assert name == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["code"] == "generation_failed" and "ScriptedFailure" in error["error"]
    assert events[4:] == [""]  # and the stream ends there


def test_a_details_stream_sends_token_events_then_an_error_event(client):
    response = client.post("/generate/stream", json={**REQUEST, "details": True})
    names = [e.split("\n")[0] for e in response.get_data(as_text=True).split("\n\n") if e]
    assert names == ["data: ab", "event: token", "event: token", "event: token", "event: error"]


def test_generate_answers_500_generation_failed(client):
    response = client.post("/generate", json=REQUEST)
    assert response.status_code == 500
    assert response.get_json()["code"] == "generation_failed"
    # The model keeps serving: a prompt without a failure in its script completes.
    again = client.post("/generate", json={**REQUEST, "prompt": "hh", "max_new_tokens": 2})
    assert again.status_code == 200 and again.get_json()["text"] == "hhhh"
