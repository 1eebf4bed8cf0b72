"""Prompt preparation: chat templates, encoding for generation, tokenization for display.

These run tokenizer work in the calling greenlet's thread pool (never on the
model's thread) and only borrow the tokenizer: no call changes its settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from app.engine.contract import decode_text
from app.engine.decoding import Pieces, char_spans, split_pieces
from app.errors import BadRequest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Tokenized(Protocol):
    """What these functions need of a model: its id (for errors) and its tokenizer.

    A `ModelProfile` has both before the weights are loaded, so a request can be
    encoded (and refused) early; a `LoadedModel` has them too.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...


@dataclass(frozen=True)
class Tokens:
    """A prompt's tokens, with the text and the prompt characters behind each one."""

    prompt: str
    ids: list[int]
    pieces: list[str]
    offsets: list[list[int]]
    special: list[bool]


@dataclass(frozen=True)
class PromptInput:
    """What the client sent: a `prompt`, chat `messages`, or (for display) `token_ids`."""

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    token_ids: list[int] | None = None
    add_special_tokens: bool | None = None  # None: the tokenizer's own default


def render(lm: Tokenized, given: PromptInput) -> tuple[str, bool | None]:
    """The prompt text, and whether to add special tokens (None: the tokenizer's default)."""
    if given.messages is None:
        return given.prompt or "", given.add_special_tokens
    if not lm.tokenizer.chat_template:
        raise BadRequest(
            f"model {lm.model_id!r} has no chat template: send `prompt` instead of `messages`"
        )
    try:
        text = lm.tokenizer.apply_chat_template(
            given.messages, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # jinja raises for conversations the template refuses
        raise BadRequest(f"the chat template refused these messages: {exc}") from None
    # One conversation rendered with tokenize=False is one str (ids or a batch otherwise).
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template answered {type(text).__name__}, not a str")
    # A rendered template already holds its special tokens (BOS and the like).
    return text, False


def encode(lm: Tokenized, given: PromptInput) -> tuple[str, list[int]]:
    """The prompt text and its ids for generation; an empty prompt starts from BOS."""
    prompt, add_special = render(lm, given)
    ids = _encode(lm, prompt, add_special_tokens=add_special is not False)["input_ids"]
    if ids:
        return prompt, ids
    if lm.tokenizer.bos_token_id is None:
        raise BadRequest("the prompt is empty and this model has no beginning-of-sequence token")
    return prompt, [lm.tokenizer.bos_token_id]


def count_tokens(lm: Tokenized, given: PromptInput) -> int:
    """How many tokens `tokenize` would give, without working out their texts and spans."""
    if given.token_ids is not None:
        return len(check_token_ids(lm, given.token_ids))
    prompt, add_special = render(lm, given)
    options = {} if add_special is None else {"add_special_tokens": add_special}
    return len(_encode(lm, prompt, **options)["input_ids"])


def tokenize(lm: Tokenized, given: PromptInput) -> Tokens:
    """Tokenize `prompt` or `messages`, or describe given `token_ids`, for display."""
    tokenizer = lm.tokenizer
    if given.token_ids is not None:
        ids = check_token_ids(lm, given.token_ids)
        pieces = split_pieces(tokenizer, ids)
        return _tokens("".join(pieces.texts), ids, pieces, None)
    prompt, add_special = render(lm, given)
    options = {} if add_special is None else {"add_special_tokens": add_special}
    encoding = _encode(lm, prompt, return_offsets_mapping=tokenizer.is_fast, **options)
    ids = encoding["input_ids"]
    offsets = encoding.get("offset_mapping")
    return _tokens(prompt, ids, split_pieces(tokenizer, ids), offsets)


def detokenize(
    lm: Tokenized, ids: Sequence[int], skip_special_tokens: bool, context_ids: Sequence[int] = ()
) -> str:
    """The text of these ids (checked against the vocabulary), read after `context_ids`.

    With a context (a prompt's ids), it is the text the ids add to the context's:
    what a generation of these ids streamed. Without one, the ids are read as the
    start of a text, and a SentencePiece decoder strips the first token's space.
    """
    context = check_token_ids(lm, context_ids)
    whole = _decode(lm, context + check_token_ids(lm, ids), skip_special_tokens)
    return whole[len(_decode(lm, context, skip_special_tokens)) :] if context else whole


def _encode(lm: Tokenized, prompt: str, **options: bool) -> Any:
    """The tokenizer's encoding of `prompt` (a BatchEncoding: `input_ids`, maybe offsets)."""
    try:
        return lm.tokenizer(prompt, **options)
    except Exception as exc:  # e.g. a character a vocabulary without an unknown token lacks
        raise BadRequest(
            f"the tokenizer of model {lm.model_id!r} cannot encode this text: {exc}"
        ) from None


def _decode(lm: Tokenized, ids: list[int], skip_special_tokens: bool) -> str:
    return decode_text(lm.tokenizer, ids, skip_special_tokens)


def check_token_ids(lm: Tokenized, ids: Sequence[int]) -> list[int]:
    """The ids, if every one is in the model's vocabulary; a 400 otherwise."""
    vocab = len(lm.tokenizer)
    if bad := [i for i in ids if not 0 <= i < vocab]:
        raise BadRequest(f"token id {bad[0]} is outside this model's vocabulary (0 to {vocab - 1})")
    return list(ids)


def _tokens(
    prompt: str, ids: list[int], pieces: Pieces, offsets: list[tuple[int, int]] | None
) -> Tokens:
    spans = char_spans(prompt, pieces, offsets)
    return Tokens(prompt, ids, pieces.texts, spans, pieces.special)
