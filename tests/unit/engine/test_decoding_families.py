"""Incremental decoding for every tokenizer family: the same text as decoding the whole sequence.

The text of a sequence is its decode with special tokens skipped. Whatever ids
came before (the prompt), the text the decoder gives out for the next ones is
what they add to that decode, split into pieces at token boundaries and held
back only while a character is incomplete.
"""

from __future__ import annotations

import random

import pytest

from app.engine.decoding import (
    REPLACEMENT_CHAR,
    IncrementalDecoder,
    special_ids,
    split_pieces,
    standalone_texts,
)
from tests.support.tokenizer_families import (
    BYTE_LEVEL,
    FAMILIES,
    HARD_STRINGS,
    family_tokenizer,
)


def _text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _decode_from(tokenizer, context, ids):
    decoder = IncrementalDecoder(tokenizer, context)
    return [decoder.push(i) for i in ids], decoder.flush()


@pytest.mark.parametrize("text", HARD_STRINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_split_decodes_as_the_whole(family, text):
    tokenizer = family_tokenizer(family)
    ids = tokenizer(text)["input_ids"]
    whole = _text(tokenizer, ids)
    for split in range(len(ids) + 1):
        head = _text(tokenizer, ids[:split])
        if head.endswith(REPLACEMENT_CHAR):
            continue  # a prompt is whole text: it never ends inside a character
        pieces, tail = _decode_from(tokenizer, ids[:split], ids[split:])
        assert head + "".join(pieces) + tail == whole, (split, pieces)
        assert tail.strip(REPLACEMENT_CHAR) == ""  # only a text's own final "�" waits


def _byte_fallback(tokenizer):
    """Whether the decoder turns "<0x..>" tokens into bytes (SentencePiece: Llama 2, Gemma)."""
    return "ByteFallback" in repr(tokenizer.backend_tokenizer.decoder)


def _random_ids(tokenizer, rng, count=24):
    """Random ids: specials, characters spelled in bytes, any other token.

    A byte-fallback decoder turns a whole run of byte tokens into "�" once any of
    it is not UTF-8, even the characters that came first: such runs are left out
    here (see test_an_invalid_byte_run_differs_only_inside_it).
    """
    specials = sorted(special_ids(tokenizer))
    vocab = tokenizer.get_vocab() if _byte_fallback(tokenizer) else {}
    bytes_ = {i for token, i in vocab.items() if token.startswith("<0x")}
    plain = [i for i in range(len(tokenizer)) if i not in bytes_]
    ids = []
    while len(ids) < count:
        roll = rng.random()
        if roll < 0.1:
            ids.append(rng.choice(specials))
        elif roll < 0.25:
            ids += _spelled(tokenizer, rng.choice(["🦙", "€", "ß", "你", "👩‍💻", "\r\n"]))
        else:
            ids.append(rng.choice(plain))
    return ids


def _spelled(tokenizer, char):
    """The ids of `char`, in byte tokens where the tokenizer has them."""
    if _byte_fallback(tokenizer):
        return tokenizer.convert_tokens_to_ids([f"<0x{b:02X}>" for b in char.encode()])
    return tokenizer(char, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_ids_decode_as_the_whole(family):
    """Any ids (specials, bytes that never become a character) after any context."""
    tokenizer = family_tokenizer(family)
    rng = random.Random(family)
    for _ in range(60):
        ids = _random_ids(tokenizer, rng)
        split = rng.randrange(len(ids) + 1)
        while _text(tokenizer, ids[:split]).endswith(REPLACEMENT_CHAR):
            split -= 1  # contexts are prompts: whole text
        pieces, tail = _decode_from(tokenizer, ids[:split], ids[split:])
        assert _text(tokenizer, ids[:split]) + "".join(pieces) + tail == _text(tokenizer, ids)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in BYTE_LEVEL])
def test_an_invalid_byte_run_differs_only_inside_it(family):
    """The one exception: "q" then bytes that are no UTF-8, in one run of byte tokens.

    The stream gives "q" out as soon as its byte comes; decoded whole, the run is
    one "�" per byte. Before and after the run the texts agree.
    """
    tokenizer = family_tokenizer(family)
    context = tokenizer("Hi", add_special_tokens=False)["input_ids"]
    run = tokenizer.convert_tokens_to_ids(["<0x71>", "<0x9F>", "<0xAB>", "<0x80>"])
    after = tokenizer(" there", add_special_tokens=False)["input_ids"]
    pieces, tail = _decode_from(tokenizer, context, run + after)
    streamed = _text(tokenizer, context) + "".join(pieces) + tail
    whole = _text(tokenizer, context + run + after)
    rest = whole.removeprefix("Hi����")
    assert rest.endswith("there") and streamed == "Hiq���" + rest


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_incomplete_is_given_out(family):
    """A piece never ends in part of a character; the character comes whole, at once."""
    tokenizer = family_tokenizer(family)
    ids = tokenizer("a 🦙 👩‍💻 你好 🇫🇷", add_special_tokens=False)["input_ids"]
    pieces, tail = _decode_from(tokenizer, [], ids)
    assert REPLACEMENT_CHAR not in "".join(pieces) and tail == ""
    for index, piece in enumerate(pieces):
        if piece:  # everything the ids so far make, up to their last whole character
            assert _text(tokenizer, ids[: index + 1]).rstrip(REPLACEMENT_CHAR).endswith(piece)


@pytest.mark.parametrize("family", FAMILIES)
def test_peek_tells_what_push_will_add(family):
    tokenizer = family_tokenizer(family)
    rng = random.Random(3)
    decoder = IncrementalDecoder(tokenizer, tokenizer("Hello  there")["input_ids"])
    for _ in range(40):
        token_id = rng.randrange(len(tokenizer))
        candidates = [token_id, *rng.sample(range(len(tokenizer)), 5)]
        expected = decoder.peek(candidates)[0]
        assert decoder.push(token_id) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_add_no_text(family):
    tokenizer = family_tokenizer(family)
    decoder = IncrementalDecoder(tokenizer, tokenizer("Hi")["input_ids"])
    specials = sorted(special_ids(tokenizer))
    assert [decoder.push(i) for i in specials] == [""] * len(specials)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_special_token_in_the_middle_keeps_the_next_space(family):
    """After `</s>`, "▁world" still adds " world", as it does in the whole decode."""
    tokenizer = family_tokenizer(family)
    word = tokenizer(" world", add_special_tokens=False)["input_ids"]
    ids = tokenizer("Hi", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    pieces, _ = _decode_from(tokenizer, ids, word)
    assert "".join(pieces) == _text(tokenizer, ids + word)[len(_text(tokenizer, ids)) :]
    assert "".join(pieces).startswith(" ")


@pytest.mark.parametrize("text", HARD_STRINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_non_special_pieces_join_to_the_decoded_text(family, text):
    tokenizer = family_tokenizer(family)
    ids = tokenizer(text)["input_ids"]
    pieces = split_pieces(tokenizer, ids)
    assert len(pieces.texts) == len(ids)
    joined = "".join(p for p, s in zip(pieces.texts, pieces.special, strict=True) if not s)
    assert joined == _text(tokenizer, ids)
    for token_id, piece, special in zip(ids, pieces.texts, pieces.special, strict=True):
        assert special == (token_id in special_ids(tokenizer))
        if special:
            assert piece == tokenizer.convert_ids_to_tokens([token_id])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_standalone_texts_are_the_text_in_context(family):
    """Decoded alone, "▁▁" and "▁word" keep every space, as they have after another word."""
    tokenizer = family_tokenizer(family)
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    ids = random.Random(5).sample(range(len(tokenizer)), min(len(tokenizer), 600))
    texts = standalone_texts(tokenizer, ids)
    specials = special_ids(tokenizer)
    for token_id in ids:
        in_context = _text(tokenizer, anchor + [token_id])[len(_text(tokenizer, anchor)) :]
        if token_id in specials or REPLACEMENT_CHAR in in_context:
            continue  # specials show their own text; lone bytes are no text
        assert texts[token_id] == in_context, tokenizer.convert_ids_to_tokens([token_id])
