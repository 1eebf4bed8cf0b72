"""Incremental detokenization against both tokenizer families."""

from __future__ import annotations

import random

import pytest

from app.engine.decoding import IncrementalDecoder, token_pieces
from tests.support.tiny_models import MODEL_IDS

TEXTS = [
    "Hello world",
    "Emoji 🦙 and 🤖 are not in the training text, so they split into byte pieces.",
    "CJK 你好，世界 and 日本語; accents café naïve; tabs\tand  double  spaces",
    "line one\nline two\n\n  indented",
]


def _decode(tokenizer, ids):
    # What /detokenize answers: special tokens add no text.
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", MODEL_IDS)
@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_decoded_text(tokenizers, name, text):
    tokenizer = tokenizers[name]
    ids = tokenizer(text)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    special = set(tokenizer.all_special_ids)
    text = "".join(p for p, i in zip(pieces, ids, strict=True) if i not in special)
    assert text == _decode(tokenizer, ids)
    assert "\ufffd" not in text


@pytest.mark.parametrize("name", MODEL_IDS)
def test_split_character_goes_whole_to_its_last_token(tokenizers, name):
    tokenizer = tokenizers[name]
    ids = tokenizer("🦙", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the test needs an emoji split over several tokens"
    pieces = token_pieces(tokenizer, ids)
    assert pieces[-1].endswith("🦙")
    assert all(piece in ("", " ") for piece in pieces[:-1])


def test_sentencepiece_keeps_leading_spaces(tokenizers):
    tokenizer = tokenizers["tiny-llama"]
    ids = tokenizer("Hello world")["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert pieces[0] == "<s>"  # special tokens show their own text, outside the join
    assert "".join(pieces[1:]) == "Hello world"  # no space: the decoded text has none
    assert any(piece.startswith(" w") for piece in pieces)  # "▁world" decoded alone would lose it


def _random_valid_continuation(tokenizer, rng):
    """Random whole-text tokens mixed with the byte pieces of complete characters."""
    vocab = tokenizer.get_vocab()
    whole = [i for token, i in vocab.items() if not token.startswith("<0x")]
    ids = []
    for _ in range(30):
        if rng.random() < 0.2:
            ids += tokenizer(rng.choice(["🦙", "🤖", "ß", "€"]), add_special_tokens=False)[
                "input_ids"
            ]
        else:
            ids.append(rng.choice(whole))
    return ids


@pytest.mark.parametrize("name", MODEL_IDS)
def test_continuation_matches_full_decode(tokenizers, name):
    """Continuations decode piece by piece exactly as the whole sequence does."""
    tokenizer = tokenizers[name]
    rng = random.Random(7)
    context = tokenizer("A prompt with  spaces:")["input_ids"]
    for _ in range(20):
        generated = _random_valid_continuation(tokenizer, rng)
        decoder = IncrementalDecoder(tokenizer, context)
        text = "".join(decoder.push(i) for i in generated) + decoder.flush()
        full = _decode(tokenizer, context + generated)
        assert full.endswith(text)
        assert full[: len(full) - len(text)] == _decode(tokenizer, context)


def test_incomplete_character_is_held_back(tokenizers):
    tokenizer = tokenizers["tiny-gpt2"]
    ids = tokenizer("🦙")["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.flush() != ""  # the incomplete bytes still come out at the end
