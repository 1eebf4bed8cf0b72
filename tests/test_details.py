"""Generation controls and per-token details (seed, stop, logprobs, offsets, chat)."""

from __future__ import annotations

import json
import threading

import pytest
import requests
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import MODEL_IDS
from tests.sse_client import SSEEvent, message_data, parse

TEXTS = [
    "Hello world",
    "Emoji 🦙 🤖 and 😀!",
    "CJK 你好，世界 日本語",
    "Accents: café, naïve, Ærø",
    "repeated   spaces  and\ttabs\nnewline",
]


def _generate(client, **body):
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# -- details --


def test_without_details_the_answer_is_the_seed_shape(client):
    assert set(_generate(client, prompt="Hi", max_new_tokens=3)) == {"text"}


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_greedy_logprobs_equal_the_models_own_log_softmax(client, model_root, model_id):
    prompt = "Once upon a time"
    answer = _generate(
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
    details = _generate(client, model_id="tiny-llama", prompt="Hi", max_new_tokens=5, details=True)[
        "details"
    ]
    assert details["finish_reason"] in ("length", "eos")
    timing = details["timing"]
    assert set(timing) == {"queue_ms", "prefill_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    assert 0 <= timing["queue_ms"] <= timing["ttft_ms"] <= timing["total_ms"]
    assert timing["prefill_ms"] >= 0 and timing["tokens_per_s"] > 0
    assert all(isinstance(token["special"], bool) for token in details["tokens"])


def test_finish_reason_length(client):
    details = _generate(client, prompt="Hi", max_new_tokens=4, ignore_eos=True, details=True)[
        "details"
    ]
    assert details["finish_reason"] == "length"


# -- seeds --


def _seeded(model_id="tiny-llama", seed=1234, **extra):
    body = {"model_id": model_id, "prompt": "Seeded:", "max_new_tokens": 40, "seed": seed}
    body.update(temperature=1.0, top_p=0.9, top_k=50, ignore_eos=True, **extra)
    return body


def _stream_text(server, body):
    response = requests.post(server.url("/generate/stream"), json=body, timeout=120)
    return "".join(message_data(parse(response.content.decode())))


def test_seeded_runs_match_streamed_or_not_alone_or_in_company(server):
    body = _seeded()
    alone = requests.post(server.url("/generate"), json=body, timeout=120).json()["text"]
    assert _stream_text(server, body) == alone
    other_seed = requests.post(server.url("/generate"), json=_seeded(seed=99), timeout=120)
    assert other_seed.json()["text"] != alone  # the seed matters

    results, company = {}, []
    others = [_seeded(seed=s, max_new_tokens=200) for s in (1, 2)] + [
        _seeded("tiny-gpt2", seed=3, max_new_tokens=200),
        {**_seeded(seed=4, max_new_tokens=200), "temperature": 0.3, "stop": ["zzz"]},
    ]
    for other in others:
        company.append(threading.Thread(target=_stream_text, args=(server, other)))
    company.append(threading.Thread(target=lambda: results.update(s=_stream_text(server, body))))
    company.append(
        threading.Thread(
            target=lambda: results.update(
                g=requests.post(server.url("/generate"), json=body, timeout=120).json()["text"]
            )
        )
    )
    for thread in company:
        thread.start()
    for thread in company:
        thread.join(timeout=120)
    assert results == {"s": alone, "g": alone}


# -- stop strings --


def test_stop_string_ends_the_text_before_it(client, server):
    base = {"prompt": "Stop test:", "max_new_tokens": 60, "temperature": 0, "ignore_eos": True}
    base["return_full_text"] = False
    full = _generate(client, **base)["text"]
    assert len(full) > 10
    stop = full[6:8]
    expected = full[: full.index(stop)]
    answer = _generate(client, **base, stop=[stop, "never-there"], details=True)
    assert answer["text"] == expected
    assert answer["details"]["finish_reason"] == "stop"
    assert answer["details"]["generated_tokens"] < 60
    streamed = _stream_text(server, {**base, "stop": [stop]})
    assert streamed == expected


# -- streaming details --


def test_stream_details_events(server):
    body = {"model_id": "tiny-llama", "prompt": "Hi", "max_new_tokens": 8, "temperature": 0}
    body.update(ignore_eos=True, details=True, top_logprobs=2)
    expected = requests.post(server.url("/generate"), json=body, timeout=60).json()["details"]
    events = parse(requests.post(server.url("/generate/stream"), json=body, timeout=60).text)
    assert events[0] == SSEEvent("message", "Hi")
    tokens = [json.loads(e.data) for e in events if isinstance(e, SSEEvent) and e.event == "token"]
    done = json.loads(events[-1].data)
    assert events[-1].event == "done"
    assert [t["id"] for t in tokens] == [t["id"] for t in expected["tokens"]]
    assert [t["text"] for t in tokens] == [t["text"] for t in expected["tokens"]]
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert done["finish_reason"] == "length"
    assert done["generated_tokens"] == len(tokens) == 8
    assert set(done["timing"]) == set(expected["timing"])


# -- tokenize for display --


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("text", TEXTS)
def test_offsets_slice_the_prompt_to_each_token(client, model_id, text):
    body = client.post("/tokenize", json={"model_id": model_id, "prompt": text}).get_json()
    assert len(body["offsets"]) == len(body["special"]) == body["count"]
    for index, (piece, (start, end), special) in enumerate(
        zip(body["tokens"], body["offsets"], body["special"], strict=True)
    ):
        if special:
            assert start == end or text[start:end] == piece
            continue
        if piece == "":  # part of a character: shares the span of the token that completes it
            following = next(i for i in range(index, body["count"]) if body["tokens"][i])
            assert [start, end] == body["offsets"][following]
            continue
        # SentencePiece adds a space in front of the text: it has no place in the prompt.
        synthetic_space = start == 0 and piece.startswith(" ") and not text.startswith(" ")
        assert text[start:end] == (piece[1:] if synthetic_space else piece)


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("text", TEXTS)
def test_detokenize_round_trip(client, model_id, text):
    ids = client.post("/tokenize", json={"model_id": model_id, "prompt": text}).get_json()
    back = client.post("/detokenize", json={"model_id": model_id, "token_ids": ids["token_ids"]})
    assert back.status_code == 200
    assert back.get_json()["text"] == text


def test_special_flags_and_add_special_tokens(client):
    with_bos = client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "Hi"}).get_json()
    assert with_bos["special"][0] is True and with_bos["tokens"][0] == "<s>"
    without = client.post(
        "/tokenize", json={"model_id": "tiny-llama", "prompt": "Hi", "add_special_tokens": False}
    ).get_json()
    assert without["token_ids"] == with_bos["token_ids"][1:]
    assert not any(without["special"])


def test_detokenize_keeps_specials_when_asked(client):
    ids = client.post("/tokenize", json={"model_id": "tiny-llama", "prompt": "Hi"}).get_json()
    body = {"model_id": "tiny-llama", "token_ids": ids["token_ids"], "skip_special_tokens": False}
    assert client.post("/detokenize", json=body).get_json()["text"] == "<s> Hi"


# -- chat messages --

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def test_messages_are_rendered_with_the_chat_template(client, tokenizers):
    expected = tokenizers["tiny-llama"].apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True
    )
    body = client.post("/tokenize", json={"model_id": "tiny-llama", "messages": CHAT}).get_json()
    assert body["prompt"] == expected
    assert body["prompt"].endswith("<|assistant|>\n")
    assert "".join(body["tokens"]).endswith("<|assistant|>\n")
    answer = _generate(client, model_id="tiny-llama", messages=CHAT, max_new_tokens=5)
    assert answer["text"].startswith(expected)


def test_messages_without_a_chat_template_is_400(client):
    response = client.post("/generate", json={"model_id": "tiny-gpt2", "messages": CHAT})
    assert response.status_code == 400
    assert "chat template" in response.get_json()["error"]


# -- validation --


@pytest.mark.parametrize(
    "extra",
    [
        {"stop": ["a"] * 9},
        {"stop": [""]},
        {"stop": "a"},
        {"stop": [1]},
        {"top_logprobs": 21},
        {"top_logprobs": -1},
        {"top_k": "3"},
        {"seed": True},
        {"seed": 1.5},
        {"ignore_eos": "yes"},
        {"details": 1},
        {"messages": CHAT},  # both prompt and messages
        {"prompt": None},  # neither
        {"prompt": None, "messages": []},
        {"prompt": None, "messages": [{"role": "user"}]},
        {"prompt": None, "messages": [{"role": "", "content": "x"}]},
        {"prompt": None, "messages": "hello"},
    ],
)
def test_bad_controls_are_400(client, extra):
    body = {"model_id": "tiny-llama", "prompt": "x", **extra}
    for path in ("/generate", "/generate/stream"):
        response = client.post(path, json=body)
        assert response.status_code == 400, (path, response.get_json())
        assert response.get_json()["code"] == "bad_request"


@pytest.mark.parametrize(
    "body",
    [
        {"token_ids": [10**9]},
        {"token_ids": [-1]},
        {"token_ids": "1 2"},
        {"token_ids": [1.5]},
        {},
    ],
)
def test_bad_detokenize_is_400(client, body):
    response = client.post("/detokenize", json={"model_id": "tiny-gpt2", **body})
    assert response.status_code == 400
