"""Incremental detokenization: ids in, text pieces out, UTF-8 and SentencePiece safe.

Decoding one id at a time is wrong twice over: a byte-level piece of an emoji
decodes to "�", and a SentencePiece "▁word" loses its space when it is first
in the decoded span. So, as TGI does, each new piece is the difference between
decoding a short window that ends with the new ids and the same window without
them. Text is held back while it ends in an incomplete character.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
_CONTEXT = 5  # tokens of context kept before the unread ones


class IncrementalDecoder:
    """Turns a growing sequence of token ids into the text each step adds."""

    def __init__(self, tokenizer: Any, context_ids: Sequence[int] = ()) -> None:
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


def token_pieces(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds, so that joining them gives the decoded text."""
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token_id) for token_id in token_ids]
    if pieces:
        pieces[-1] += decoder.flush()
    return pieces


def shared_spans(pieces: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Character spans per token, where the tokens of one split character share its span.

    `offsets` come from the tokenizer; a token whose piece is "" (part of a
    character completed by a later token) takes the span of the whole group.
    """
    spans: list[list[int]] = []
    group: list[tuple[int, int]] = []
    for index, (piece, span) in enumerate(zip(pieces, offsets, strict=True)):
        group.append(tuple(span))
        if piece == "" and index < len(pieces) - 1:
            continue
        union = [min(start for start, _ in group), max(end for _, end in group)]
        spans.extend([list(union) for _ in group])
        group = []
    return spans
