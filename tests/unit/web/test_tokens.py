"""POST /tokenize and POST /detokenize through Flask's test client: pieces, offsets, specials."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import MODEL_IDS


@pytest.mark.parametrize("name", MODEL_IDS)
def test_tokenize_matches_the_tokenizer(client, tokenizers, name):
    response = client.post("/tokenize", json={"model_id": name, "prompt": "Hello world"})
    assert response.status_code == 200
    body = response.get_json()
    tokenizer = tokenizers[name]
    assert body["token_ids"] == tokenizer("Hello world")["input_ids"]
    assert body["count"] == len(body["token_ids"])
    assert len(body["tokens"]) == body["count"]
    plain = [t for t, special in zip(body["tokens"], body["special"], strict=True) if not special]
    assert "".join(plain) == tokenizer.decode(body["token_ids"], skip_special_tokens=True)


def test_tokenize_gpt2_style_pieces_keep_their_space(client):
    body = client.post("/tokenize", json={"prompt": "Hello world"}).get_json()
    assert "".join(body["tokens"]) == "Hello world"
    assert any(token.startswith(" w") for token in body["tokens"])


def test_tokenize_uses_the_default_model(client):
    with_default = client.post("/tokenize", json={"prompt": "Hi"}).get_json()
    explicit = client.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": "Hi"}).get_json()
    assert with_default == explicit


# -- tokenize for display --


TEXTS = [
    "Hello world",
    "Emoji 🦙 🤖 and 😀!",
    "CJK 你好，世界 日本語",
    "Accents: café, naïve, Ærø",
    "repeated   spaces  and\ttabs\nnewline",
]


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
        if piece == "":
            # Part of a character: the span of the token that completes it. Or a space the
            # tokenizer put in front of the text, which is in no token: an empty span.
            following = next(i for i in range(index, body["count"]) if body["tokens"][i])
            assert [start, end] == body["offsets"][following] or start == end
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


@pytest.mark.parametrize("name", MODEL_IDS)
def test_tokenize_names_the_token_an_empty_prompt_starts_from(client, tokenizers, name):
    # The viewer shows attention of exactly what the model saw: from an empty prompt that
    # is this token, which /generate starts from (prompts.encode).
    body = client.post("/tokenize", json={"model_id": name, "prompt": ""}).get_json()
    assert body["bos_token_id"] == tokenizers[name].bos_token_id
    assert body["bos_token_id"] is not None
