"""Every tokenizer family as real checkpoints load it, through the server's endpoints.

For each family (tests/support/tokenizer_families.py) and each hard string:
- /tokenize's non-special `tokens` join to the decoded text, which /detokenize gives;
- `prompt[start:end] == tokens[i]`, but for the exceptions docs/api.md names;
- /detokenize of the ids gives back the prompt, but for the tokenizers that change it;
- a generation's stream, its /generate answer and /detokenize of its ids agree.
"""

from __future__ import annotations

import json
import unicodedata
from types import SimpleNamespace

import pytest

from app import create_app, models
from app.engine import ModelWorker
from app.engine.decoding import REPLACEMENT_CHAR, special_ids
from app.models import LoadedModel, ModelProfile, prompts
from tests.support.client import post_ok
from tests.support.scripted import ScriptedLM
from tests.support.sse_client import message_data, parse
from tests.support.tokenizer_families import (
    DROPS_LEADING_SPACE,
    FAMILIES,
    HARD_STRINGS,
    INSERTS_SPACE_AFTER_SPECIALS,
    METASPACE,
    NORMALIZATION,
    STRIPS_LEADING_SPACE,
    family_root,
    family_tokenizer,
)

SENTENCEPIECE = ("llama2-legacy", "tinyllama", "llama2-json", "gemma")
CHAT_FAMILIES = [family for family in FAMILIES if family != "gpt2"]  # GPT-2 has no template


@pytest.fixture(scope="module")
def served():
    """A client of an app serving every family's tiny random model, all kept loaded."""
    models.cache.clear()
    settings = {"model_root": family_root(), "cache_size": len(FAMILIES)}
    yield create_app({**settings, "default_model": "tinyllama"}).test_client()
    models.cache.clear()


def _tokenize(client, family, **body):
    return post_ok(client, "/tokenize", model_id=family, **body)


def _detokenize(client, family, ids):
    return post_ok(client, "/detokenize", model_id=family, token_ids=ids)["text"]


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# -- the families are what real checkpoints give --


def _types(part):
    if part is None:
        return []
    inner = next((part[k] for k in ("normalizers", "pretokenizers", "decoders") if k in part), None)
    return [p["type"] for p in inner] if inner is not None else [part["type"]]


SP_DECODER = ["Replace", "ByteFallback", "Fuse"]
PIPELINES = {
    # family: class, normalizers, pre-tokenizers, decoders, BOS token added in front
    "gpt2": ("GPT2Tokenizer", [], ["ByteLevel"], ["ByteLevel"], None),
    "llama2-legacy": ("LlamaTokenizer", [], ["Metaspace"], [*SP_DECODER, "Strip"], "<s>"),
    "tinyllama": ("LlamaTokenizer", [], ["Metaspace"], [*SP_DECODER, "Strip"], "<s>"),
    "llama2-json": (
        "TokenizersBackend",
        ["Prepend", "Replace"],
        [],
        [*SP_DECODER, "Strip"],
        "<s>",
    ),
    "gemma": ("GemmaTokenizer", ["Replace"], ["Split"], SP_DECODER, "<bos>"),
    "qwen2": ("Qwen2Tokenizer", ["NFC"], ["Split", "ByteLevel"], ["ByteLevel"], None),
    "llama3": ("TokenizersBackend", [], ["Split", "ByteLevel"], ["ByteLevel"], "<|begin_of_text|>"),
}
PREPEND_SCHEMES = {"llama2-legacy": "always", "tinyllama": "first"}


@pytest.mark.parametrize("family", FAMILIES)
def test_families_load_through_the_classes_real_checkpoints_name(family):
    tokenizer = family_tokenizer(family)
    class_name, normalizers, pre_tokenizers, decoders, bos = PIPELINES[family]
    backend = tokenizer.backend_tokenizer
    pipeline = {
        name: json.loads(getattr(backend, name).__getstate__()) if getattr(backend, name) else None
        for name in ("normalizer", "pre_tokenizer", "decoder")
    }
    assert type(tokenizer).__name__ == class_name
    assert _types(pipeline["normalizer"]) == normalizers
    assert _types(pipeline["pre_tokenizer"]) == pre_tokenizers
    assert _types(pipeline["decoder"]) == decoders
    if family in PREPEND_SCHEMES:
        assert pipeline["pre_tokenizer"]["prepend_scheme"] == PREPEND_SCHEMES[family]
        assert pipeline["pre_tokenizer"]["split"] is False
    first = tokenizer.convert_ids_to_tokens(tokenizer("Hi")["input_ids"])[0]
    assert first == bos if bos else first not in tokenizer.all_special_tokens


# -- /tokenize and /detokenize --


def _partial(tokenizer, ids, index):
    """Whether the ids up to `index` end inside a character (decoded whole, not piecewise)."""
    return _decode(tokenizer, ids[: index + 1]).endswith(REPLACEMENT_CHAR)


def _check_token(family, prompt, body, index, tokenizer):
    """docs/api.md's rule for `offsets[index]`."""
    ids, tokens, special = body["token_ids"], body["tokens"], body["special"]
    start, end = body["offsets"][index]
    piece, seen = tokens[index], prompt[start:end]
    if special[index]:
        assert start == end or seen == piece  # added by the tokenizer, or written in the prompt
    elif piece == "" and _partial(tokenizer, ids, index):
        following = next(i for i in range(index, len(ids)) if tokens[i] and not special[i])
        assert [start, end] == body["offsets"][following]  # the token that completes it
    elif piece == "":
        assert start == end  # its text is nowhere in the decoded text (a space stripped)
    elif seen != piece:
        assert _reads_as(family, seen, piece, index > 0 and special[index - 1]), (piece, seen)


def _reads_as(family, seen, piece, after_special):
    """docs/api.md's exceptions to `prompt[start:end] == tokens[i]`."""
    if family in INSERTS_SPACE_AFTER_SPECIALS and after_special and piece == " " + seen:
        return True  # legacy SentencePiece puts "▁" in front of the text after a special token
    if family in METASPACE and seen.replace("\u2581", " ") == piece:
        return True  # SentencePiece reads "▁" in the text as a space
    form = NORMALIZATION.get(family)
    return form is not None and unicodedata.normalize(form, seen) == piece


def _check_offsets(family, prompt, body):
    tokenizer = family_tokenizer(family)
    spans = body["offsets"]
    assert len(spans) == len(body["tokens"]) == len(body["special"]) == body["count"]
    end = 0
    for index, (start, stop) in enumerate(spans):
        assert 0 <= start <= stop <= len(prompt)
        if index and spans[index] != spans[index - 1]:
            assert start >= end  # in order, never overlapping
        end = max(end, stop)
        _check_token(family, prompt, body, index, tokenizer)
    missing = _uncovered(prompt, spans)
    if family in DROPS_LEADING_SPACE and prompt.startswith(" "):
        assert len(missing) == 1 and prompt[missing[0]] == " "  # the space the decoder drops
    else:
        assert missing == []


def _uncovered(prompt, spans):
    inside = {i for start, stop in spans for i in range(start, stop)}
    return [i for i in range(len(prompt)) if i not in inside]


@pytest.mark.parametrize("text", HARD_STRINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_join_to_the_decoded_text(served, family, text):
    body = _tokenize(served, family, prompt=text)
    tokenizer = family_tokenizer(family)
    ids = body["token_ids"]
    assert ids == tokenizer(text)["input_ids"]
    joined = "".join(t for t, s in zip(body["tokens"], body["special"], strict=True) if not s)
    assert joined == _decode(tokenizer, ids) == _detokenize(served, family, ids)
    for token_id, token, special in zip(ids, body["tokens"], body["special"], strict=True):
        assert special == (token_id in special_ids(tokenizer))
        if special:
            assert token == tokenizer.convert_ids_to_tokens([token_id])[0]


@pytest.mark.parametrize("text", HARD_STRINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_offsets_slice_the_prompt_to_each_token(served, family, text):
    _check_offsets(family, text, _tokenize(served, family, prompt=text))


@pytest.mark.parametrize("text", HARD_STRINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_detokenize_gives_back_the_prompt(served, family, text):
    ids = _tokenize(served, family, prompt=text)["token_ids"]
    expected = text
    if family in DROPS_LEADING_SPACE and text.startswith(" "):
        expected = text[1:]  # Metaspace adds no "▁" before a space; the decoder strips that one
    if family in NORMALIZATION:
        expected = unicodedata.normalize(NORMALIZATION[family], text)
    if family in METASPACE:
        expected = expected.replace("\u2581", " ")
    assert _detokenize(served, family, ids) == expected


def _inspected(served, family, **given):
    """/inspect's tokens, in /tokenize's shape."""
    tokens = post_ok(served, "/inspect", model_id=family, include=["tokens"], **given)["tokens"]
    keys = {"token_ids": "id", "tokens": "text", "offsets": "offset", "special": "special"}
    return {name: [t[key] for t in tokens] for name, key in keys.items()} | {"count": len(tokens)}


@pytest.mark.parametrize("text", [t for t in HARD_STRINGS if t])
@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_are_described_as_in_their_prompt(served, family, text):
    """/inspect of token ids: the tokens of the prompt, placed in the text they join to."""
    from_prompt = _tokenize(served, family, prompt=text)
    assert _inspected(served, family, prompt=text) == {
        k: v for k, v in from_prompt.items() if k not in ("prompt", "bos_token_id")
    }
    from_ids = _inspected(served, family, token_ids=from_prompt["token_ids"])
    assert from_ids["tokens"] == from_prompt["tokens"]
    assert from_ids["special"] == from_prompt["special"]
    _check_offsets(family, "".join(from_ids["tokens"]), from_ids)


ISSUE_PROMPTS = ["Hello world", "a 🦙 Ω  two  spaces", "\nfoo"]


@pytest.mark.parametrize("text", ISSUE_PROMPTS)
@pytest.mark.parametrize("family", SENTENCEPIECE)
def test_the_issue_prompts_read_as_written(served, family, text):
    """The prompts of the report: no space in front, none lost, each span slicing its token."""
    body = _tokenize(served, family, prompt=text)
    assert body["special"][0] and body["offsets"][0] == [0, 0]
    columns = zip(body["tokens"], body["offsets"], body["special"], strict=True)
    shown = [(token, offset) for token, offset, _ in columns if token]
    assert "".join(t for t, _ in shown[1:]) == text
    assert shown[1][0][0] == text[0] and shown[1][1][0] == 0
    assert all(text[start:end] == token for token, (start, end) in shown[1:])


CHATS = [
    [{"role": "user", "content": "Hi 🦙\n  there"}],
    [{"role": "system", "content": " Be brief.\r\n"}, {"role": "user", "content": "你好 👩‍💻"}],
]


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_prompts_with_special_tokens_inside(served, family, messages):
    body = _tokenize(served, family, messages=messages)
    prompt = body["prompt"]
    tokenizer = family_tokenizer(family)
    assert any(body["special"])  # the template writes special tokens into the text
    joined = "".join(t for t, s in zip(body["tokens"], body["special"], strict=True) if not s)
    assert joined == _decode(tokenizer, body["token_ids"])
    _check_offsets(family, prompt, body)


# -- generation: stream, /generate and /detokenize agree --


def _lf(text):
    """SSE carries no bare CR: CR and CRLF come back as LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _generation(client, body):
    """The /generate answer (with details), and the text of the same request streamed."""
    answer = post_ok(client, "/generate", **body, details=True)
    streamed = client.post("/generate/stream", json=body)
    assert streamed.status_code == 200
    return answer, "".join(message_data(parse(streamed.get_data(as_text=True))))


def _check_generation(client, family, prompt, answer, streamed):
    ids = [token["id"] for token in answer["details"]["tokens"]]
    text = answer["text"]
    assert _lf(streamed) == _lf(text) and text.startswith(prompt)
    generated = text[len(prompt) :]
    deltas = "".join(token["delta"] for token in answer["details"]["tokens"])
    held = generated.removeprefix(deltas)  # bytes still incomplete at the end: "�"
    assert deltas + held == generated and held.strip(REPLACEMENT_CHAR) == ""
    prompt_ids = _tokenize(client, family, prompt=prompt)["token_ids"]
    head = _detokenize(client, family, prompt_ids)
    assert _detokenize(client, family, prompt_ids + ids) == head + generated
    alone = _detokenize(client, family, ids)
    if family in STRIPS_LEADING_SPACE and head and generated.startswith(" "):
        assert alone == generated[1:]  # decoded alone, the first token's space is stripped
    else:
        assert alone == generated
    lm = SimpleNamespace(tokenizer=family_tokenizer(family))
    assert prompts.detokenize(lm, ids, True, context_ids=prompt_ids) == generated


def _invalid_byte_run(tokenizer, ids):
    """Whether some run of byte-fallback tokens ("<0x..>") is not UTF-8."""
    run = bytearray()
    for token in [*tokenizer.convert_ids_to_tokens(ids), ""]:
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            run.append(int(token[3:5], 16))
            continue
        try:
            run.decode()
        except UnicodeDecodeError:
            return True
        run.clear()
    return False


GENERATION_PROMPTS = ["Hello world", " leading space", "\nfoo", "a 🦙 Ω  two  spaces", "x\r\ny"]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 11}])
@pytest.mark.parametrize("prompt", GENERATION_PROMPTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_random_models_stream_what_detokenize_reads(served, family, prompt, sampling):
    """Tiny random models of each family: whatever they say, the three texts agree.

    Except inside a run of byte-fallback tokens that is not UTF-8 (see docs/api.md).
    """
    body = {"model_id": family, "prompt": prompt, "max_new_tokens": 16, "ignore_eos": True}
    answer, streamed = _generation(served, {**body, **sampling})
    ids = [token["id"] for token in answer["details"]["tokens"]]
    prompt_ids = _tokenize(served, family, prompt=prompt)["token_ids"]
    generated = answer["text"].removeprefix(prompt)
    whole = _detokenize(served, family, prompt_ids + ids)
    if whole != _detokenize(served, family, prompt_ids) + generated:
        assert _invalid_byte_run(family_tokenizer(family), ids)
        assert _lf(streamed) == _lf(answer["text"])
        pytest.skip("the model said a run of byte tokens that is no UTF-8")
    _check_generation(served, family, prompt, answer, streamed)


# -- last: these empty the model cache the tests above share --


SCRIPT_PROMPT = "Say:"


@pytest.fixture(scope="module")
def scripted():
    """A client whose models say, after SCRIPT_PROMPT, the ids the test puts in the list."""
    scripts: list[int] = []  # what every model says next; each test sets it

    def load(spec, settings, profile=None):
        tokenizer = family_tokenizer(spec.model_id)
        prompt = tuple(tokenizer(SCRIPT_PROMPT)["input_ids"])
        lm = ScriptedLM({prompt: scripts}, vocab_size=len(tokenizer))
        eos = frozenset({tokenizer.eos_token_id})
        worker = ModelWorker(lm, tokenizer, eos, settings.max_batch, settings.max_queue)
        profile = ModelProfile(spec, tokenizer, 4096, n_layers=1, n_heads=1)
        return LoadedModel(profile, worker, eos, 0.0)

    models.cache.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.cache, "loader", load)
        settings = {"model_root": family_root(), "cache_size": len(FAMILIES)}
        yield create_app(settings).test_client(), scripts
    models.cache.clear()


@pytest.mark.parametrize("text", [t for t in HARD_STRINGS if t])
@pytest.mark.parametrize("family", FAMILIES)
def test_generated_text_is_what_the_ids_add_to_the_prompt(scripted, family, text):
    """The model says the hard string's tokens, an EOS (ignored), and the string again."""
    client, script = scripted
    tokenizer = family_tokenizer(family)
    said = tokenizer(text, add_special_tokens=False)["input_ids"]
    script[:] = [*said, tokenizer.eos_token_id, *said]
    body = {"model_id": family, "prompt": SCRIPT_PROMPT, "temperature": 0, "ignore_eos": True}
    answer, streamed = _generation(client, {**body, "max_new_tokens": len(script)})
    assert [token["id"] for token in answer["details"]["tokens"]] == script
    _check_generation(client, family, SCRIPT_PROMPT, answer, streamed)
