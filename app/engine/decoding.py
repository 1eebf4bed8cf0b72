"""Incremental detokenization: ids in, text pieces out, UTF-8 and SentencePiece safe.

The text of a sequence is its decode with special tokens skipped, as /detokenize
gives it by default; each token's piece is what it adds to that text. Decoding
one id at a time is wrong twice over: a byte-level piece of an emoji decodes to
"�", and a SentencePiece "▁word" loses its space when it is first in the decoded
span. So, as TGI does, a new piece is the difference between decoding a short
window that ends with the new ids and the same window without them. The window
always starts with a token the decoder may strip (a non-special one), so a
leading-space strip touches only the window's old text, never the new piece;
only at the very start of a sequence does the strip reach the new text, as it
does when the whole sequence is decoded. Text is held back while it ends in an
incomplete character; what comes before that character is given out at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.contract import Tokenizer, decode_text

REPLACEMENT_CHAR = "\ufffd"
_CONTEXT = 4  # tokens of the prompt kept before the first generated one


def special_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids that decoding with `skip_special_tokens` leaves out."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    flagged = {i for i, token in added.items() if getattr(token, "special", False)}
    return frozenset(tokenizer.all_special_ids).union(flagged)


class IncrementalDecoder:
    """Turns a growing sequence of token ids into the text each step adds.

    The text is the sequence's decode with special tokens skipped: a special
    token adds "".
    """

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._special = special_ids(tokenizer)
        ids = list(context_ids)
        self._window = ids[self._anchor(ids) :]  # the ids decoded each step
        self._read = len(self._window)  # window ids whose text is all given out
        self._before = self._decode(self._window)  # the text of window[:read]
        self._given = 0  # characters given out past `_before` (text before a split character)

    @property
    def holding(self) -> bool:
        """Whether the ids so far end in part of a character, held back."""
        return self._read < len(self._window)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character is incomplete)."""
        self._window.append(token_id)
        after = self._decode(self._window)
        text, complete = self._new_text(after)
        if complete:
            self._advance(after)
        else:
            self._given += len(text)
        return text

    def peek(self, token_ids: list[int]) -> list[str]:
        """The text each of these ids would add next, without adding any of them."""
        return [self._new_text(self._decode([*self._window, i]))[0] for i in token_ids]

    def flush(self) -> str:
        """Return whatever is still held back, even if it is not valid text."""
        if not self.holding:
            return ""
        after = self._decode(self._window)
        text = after[len(self._before) + self._given :]
        self._advance(after)
        return text

    def _new_text(self, after: str) -> tuple[str, bool]:
        """What the window's text `after` adds past the text given out, and if it is complete.

        Text that ends in an incomplete character is cut before it.
        """
        text = after[len(self._before) + self._given :]
        if after.endswith(REPLACEMENT_CHAR):
            return text.rstrip(REPLACEMENT_CHAR), False
        return text, True

    def _advance(self, after: str) -> None:
        """All text is given out: start the next window at the ids just read."""
        new = self._window[self._read :]
        if any(token_id not in self._special for token_id in new):
            self._window = new
            after = self._decode(new)
        self._read, self._before, self._given = len(self._window), after, 0

    def _anchor(self, ids: list[int]) -> int:
        """Where the first window starts: a few ids back, on a whole character, not special."""
        start = max(len(ids) - _CONTEXT, 0)
        while start > 0 and (
            all(token_id in self._special for token_id in ids[start:])
            or self._decode(ids[start:]).startswith(REPLACEMENT_CHAR)
        ):
            start -= 1  # a window that starts inside a character would decode it as "�"
        return start

    def _decode(self, ids: list[int]) -> str:
        return decode_text(self._tokenizer, ids, skip_special_tokens=True)


@dataclass(frozen=True)
class Pieces:
    """The text behind each token of a sequence, and what kind of token it is.

    The texts of the non-special tokens join to the sequence's decode with special
    tokens skipped; a special token's text is its own (`<s>`) and is not part of it.
    """

    texts: list[str]
    special: list[bool]
    partial: list[bool]  # holds part of a character that a later token completes


def split_pieces(tokenizer: Tokenizer, token_ids: Sequence[int]) -> Pieces:
    """Each token's piece of the decoded text, its special flag, and whether it is partial."""
    special = special_ids(tokenizer)
    decoder = IncrementalDecoder(tokenizer)
    texts, partial = [], []
    for token_id in token_ids:
        texts.append(decoder.push(token_id))
        partial.append(decoder.holding)
    flags = [token_id in special for token_id in token_ids]
    _attach_tail(texts, partial, flags, decoder.flush())
    for index, token_id in enumerate(token_ids):
        if flags[index]:
            texts[index] = tokenizer.convert_ids_to_tokens([token_id])[0]
    return Pieces(texts, flags, partial)


def _attach_tail(texts: list[str], partial: list[bool], special: list[bool], tail: str) -> None:
    """Give text still held at the end (bytes that never became a character) to its token."""
    last = next((i for i in reversed(range(len(texts))) if not special[i]), None)
    if last is not None:
        texts[last] += tail
        partial[last:] = [False] * (len(partial) - last)


def token_pieces(tokenizer: Tokenizer, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds (special tokens: their own text); see `Pieces`."""
    return split_pieces(tokenizer, token_ids).texts


def char_spans(
    text: str, pieces: Pieces, offsets: Sequence[tuple[int, int]] | None
) -> list[list[int]]:
    """The `[start, end)` characters of `text` behind each token.

    Tokens are walked along the text so that each span slices out exactly the
    token's piece, with these exceptions: the tokens holding parts of one
    character share the span of the token that completes it; a space the
    tokenizer inserted after a special token is left out of the span (a token
    that is only such a space gets an empty one); a special token the tokenizer
    added gets an empty span; where a normalizer rewrote the text, the
    tokenizer's own `offsets` are used. A character the decoded text lacks is
    in no span.
    """
    spans: list[list[int]] = [[0, 0] for _ in pieces.texts]
    cursor = 0
    group: list[int] = []
    for index, piece in enumerate(pieces.texts):
        if pieces.special[index]:
            fallback = None if offsets is None else (offsets[index][0], offsets[index][1])
            spans[index] = list(_locate_special(text, piece, cursor, fallback))
            cursor = spans[index][1]
            continue
        group.append(index)
        if piece == "" and pieces.partial[index]:
            continue  # part of a character: it shares the span of the token that completes it
        after_special = group[0] > 0 and pieces.special[group[0] - 1]
        span = _locate(text, piece, cursor, after_special, _group_offsets(text, offsets, group))
        for member in group:
            spans[member] = list(span)
        cursor, group = span[1], []
    for member in group:
        spans[member] = [cursor, cursor]
    return spans


def _locate(
    text: str, piece: str, cursor: int, after_special: bool, fallback: tuple[int, int] | None
) -> tuple[int, int]:
    """Where a non-special piece sits in `text`, at or after `cursor`."""
    if text.startswith(piece, cursor):
        return cursor, cursor + len(piece)
    if after_special and piece.startswith(" ") and text.startswith(piece[1:], cursor):
        return cursor, cursor + len(piece) - 1  # legacy SentencePiece: "▁" after a special
    if fallback is None:
        return cursor, cursor
    found = text.find(piece, cursor, max(fallback[1], cursor + len(piece)))
    if found >= 0:  # the decoder dropped a character of the prompt (a leading space)
        return found, found + len(piece)
    return max(fallback[0], cursor), max(fallback[1], cursor)


def _locate_special(
    text: str, piece: str, cursor: int, fallback: tuple[int, int] | None
) -> tuple[int, int]:
    """A special token's span: its text where the prompt has it, else empty (it was added)."""
    if fallback is not None:
        start, end = fallback
        return (start, end) if end > start and start >= cursor else (cursor, cursor)
    if piece and text.startswith(piece, cursor):
        return cursor, cursor + len(piece)
    return cursor, cursor


def _group_offsets(
    text: str, offsets: Sequence[tuple[int, int]] | None, group: list[int]
) -> tuple[int, int] | None:
    """The tokenizer's span for these tokens, up to where the next token's text starts.

    A normalizer's alignment can leave characters it merged out of every span
    (NFC: the combining accent of e + U+0301); they belong to the token before.
    """
    if offsets is None:
        return None
    start = min(offsets[i][0] for i in group)
    end = max(offsets[i][1] for i in group)
    # Walk indices, not a slice: a slice per token made long prompts quadratic.
    after = range(group[-1] + 1, len(offsets))
    following = (offsets[i][0] for i in after if offsets[i][1] > offsets[i][0])
    return start, max(end, next(following, len(text)))


def standalone_texts(tokenizer: Tokenizer, token_ids: Sequence[int]) -> dict[int, str]:
    """A display text per id, as the token reads after another token (for candidates).

    Decoded alone, "▁word" or "▁▁" would lose the space a SentencePiece decoder
    strips from the front of a text: the second half of the id decoded twice has it.
    """
    texts = {}
    for token_id in sorted(set(token_ids)):
        once = _decode_with_specials(tokenizer, [token_id])
        texts[token_id] = _decode_with_specials(tokenizer, [token_id, token_id])[len(once) :]
    return texts


def _decode_with_specials(tokenizer: Tokenizer, ids: list[int]) -> str:
    return decode_text(tokenizer, ids, skip_special_tokens=False)
