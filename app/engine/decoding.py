"""Incremental detokenization: ids in, text pieces out, UTF-8 and SentencePiece safe.

Decoding one id at a time is wrong twice over: a byte-level piece of an emoji
decodes to "�", and a SentencePiece "▁word" loses its space when it is first
in the decoded span. So, as TGI does, each new piece is the difference between
decoding a short window that ends with the new ids and the same window without
them. Text is held back while it ends in an incomplete character.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.contract import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
_CONTEXT = 5  # tokens of context kept before the unread ones


class IncrementalDecoder:
    """Turns a growing sequence of token ids into the text each step adds."""

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context_ids)
        self._read = len(self._ids)
        self._prefix = max(self._read - _CONTEXT, 0)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character is incomplete)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def peek(self, token_ids: list[int]) -> list[str]:
        """The text each of these ids would add next, without adding any of them."""
        window = self._ids[self._prefix :]
        before = self._decode(self._ids[self._prefix : self._read])
        texts = []
        for token_id in token_ids:
            after = self._decode([*window, token_id])
            complete = len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR)
            texts.append(after[len(before) :] if complete else "")
        return texts

    def flush(self) -> str:
        """Return whatever is still held back, even if it is not valid text."""
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )


def token_pieces(tokenizer: Tokenizer, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds, so that joining them gives the decoded text."""
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token_id) for token_id in token_ids]
    if pieces:
        pieces[-1] += decoder.flush()
    return pieces


def char_spans(
    text: str,
    pieces: Sequence[str],
    special: Sequence[bool],
    offsets: Sequence[tuple[int, int]] | None,
) -> list[list[int]]:
    """The `[start, end)` characters of `text` behind each token.

    Tokens are walked along the text so that each span slices out exactly the
    token's piece; the tokens of one split character share its span; a special
    token, or a space the tokenizer added (SentencePiece), gets an empty span.
    Where a normalizer changed the text, the tokenizer's own `offsets` are used.
    """
    spans: list[list[int]] = []
    cursor = 0
    group: list[int] = []
    for index, piece in enumerate(pieces):
        group.append(index)
        if piece == "" and index < len(pieces) - 1:
            continue  # part of a character: wait for the token that completes it
        span = _locate(text, piece, special[index], cursor, _group_offsets(offsets, group))
        spans.extend([list(span) for _ in group])
        cursor = max(cursor, span[1])
        group = []
    return spans


def _locate(
    text: str, piece: str, special: bool, cursor: int, fallback: tuple[int, int] | None
) -> tuple[int, int]:
    if piece and text.startswith(piece, cursor):  # special tokens too, when written out
        return cursor, cursor + len(piece)
    if special or piece == "":
        return cursor, cursor
    if cursor == 0 and piece.startswith(" ") and text.startswith(piece[1:], 0):
        return 0, len(piece) - 1  # the space SentencePiece put in front of the text
    if fallback is None:
        return cursor, cursor
    return max(fallback[0], cursor), max(fallback[1], cursor)


def _group_offsets(
    offsets: Sequence[tuple[int, int]] | None, group: list[int]
) -> tuple[int, int] | None:
    if offsets is None:
        return None
    return min(offsets[i][0] for i in group), max(offsets[i][1] for i in group)


def standalone_texts(tokenizer: Tokenizer, token_ids: Sequence[int]) -> dict[int, str]:
    """A display text per id, decoded on its own (for candidate tokens out of context).

    SentencePiece drops the space of a "▁word" decoded alone; it is put back.
    """
    unique = sorted(set(token_ids))
    raw_tokens = tokenizer.convert_ids_to_tokens(unique)
    texts = {}
    for token_id, raw in zip(unique, raw_tokens, strict=True):
        text = tokenizer.decode(
            [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if isinstance(raw, str) and raw.startswith("▁") and not text.startswith(" "):
            text = " " + text
        texts[token_id] = text
    return texts
