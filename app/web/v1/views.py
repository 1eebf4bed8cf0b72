"""OpenAI's views of a run: the choices as one JSON answer (`whole`) or as stream chunks
(`opening`, then `chunks` per event), for text completions and for chat completions.

Pure functions of the choices' folded events: no request, no engine. Every answer and
chunk is checked against its response model in `answers` (a drift is a bug, caught by
the tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from app import analysis
from app.engine import DoneEvent, TokenEvent
from app.web.serving.run import Choice, generated_tokens, prompt_tokens
from app.web.v1.answers import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    TokenLogprob,
    TopLogprob,
)

NO_LOGPROB = -9999.0  # what OpenAI sends for a logprob of -inf (JSON has no infinities)
Chunk = dict[str, Any]  # one JSON object: an answer, or one `data:` event of a stream


@dataclass(frozen=True)
class Meta:
    """What every chunk of one answer repeats: its id, Unix time and model."""

    id: str
    created: int
    model: str


def usage(choices: list[Choice]) -> dict[str, int]:
    """OpenAI's usage: each prompt counted once, every generated token of every choice."""
    prompt, completion = prompt_tokens(choices), generated_tokens(choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(choice: Choice) -> str:
    """OpenAI's reason: "length" (the token limit) or "stop" (end of text, a stop string)."""
    done = choice.done
    return "length" if done is None or done.finish_reason == "length" else "stop"


def logprob(value: float | None) -> float:
    """A logprob as OpenAI shows it: JSON has no -Infinity, so a ruled-out token's is
    -9999.0, as in OpenAI's own answers."""
    return value if value is not None and math.isfinite(value) else NO_LOGPROB


def by_text(alternatives: Iterable[tuple[str, float | None]]) -> dict[str, float]:
    """OpenAI's {text: logprob}, likeliest first; tokens that read alike keep the likeliest."""
    shown: dict[str, float] = {}
    for text, value in alternatives:
        shown.setdefault(text, logprob(value))
    return shown


class View:
    """How one endpoint shows choices: whole (`whole`) or as stream chunks."""

    object_name = ""  # of the whole answer
    chunk_name = ""  # of a stream's chunks

    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    def envelope(self, shown: list[dict[str, Any]], chunk: bool = False) -> Chunk:
        """The fields every answer (or stream chunk) has, around its choices."""
        meta = self.meta
        return {
            "id": meta.id,
            "object": self.chunk_name if chunk else self.object_name,
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": None,
            "choices": shown,
        }

    def whole(self, choices: list[Choice]) -> Chunk:
        """The one JSON answer of a request that is not streamed."""
        raise NotImplementedError

    def opening(self, choice: Choice) -> list[Chunk]:
        """The chunks a choice's stream starts with, before its first token."""
        raise NotImplementedError

    def chunks(self, choice: Choice, event: TokenEvent | DoneEvent) -> list[Chunk]:
        """The chunks one event of a choice becomes (none for a token that adds nothing)."""
        raise NotImplementedError


class CompletionView(View):
    """/v1/completions. `echo` prefixes the prompt; `top` (None: no logprobs) is the
    alternatives per token; `scores` are the prompts' own logprobs, by prompt index,
    for echo."""

    object_name = chunk_name = "text_completion"

    def __init__(
        self, meta: Meta, echo: bool, top: int | None, scores: dict[int, analysis.TokenScores]
    ) -> None:
        super().__init__(meta)
        self.echo, self.top, self.scores = echo, top, scores
        self._offsets: dict[int, int] = {}  # per choice: where its next token starts

    def whole(self, choices: list[Choice]) -> Chunk:
        shown = []
        for choice in choices:
            logprobs = None
            if self.top is not None:
                logprobs = _merge(self._echoed(choice), self._generated(choice, choice.tokens))
            text = (choice.prompt.text if self.echo else "") + choice.text
            shown.append(self._choice(choice, text, logprobs, finish_reason(choice)))
        return _valid(Completion, {**self.envelope(shown), "usage": usage(choices)})

    def opening(self, choice: Choice) -> list[Chunk]:
        chunks = []
        if self.echo:
            shown = self._choice(choice, choice.prompt.text, self._echoed(choice), None)
            chunks.append(self.envelope([shown]))
        if choice.job is None:  # max_tokens 0: nothing to generate
            chunks.append(self.envelope([self._choice(choice, "", self._none(), "length")]))
        return chunks

    def chunks(self, choice: Choice, event: TokenEvent | DoneEvent) -> list[Chunk]:
        if isinstance(event, TokenEvent):
            if not event.text and self.top is None:
                return []
            logprobs = None if self.top is None else self._generated(choice, [event])
            return [self.envelope([self._choice(choice, event.text, logprobs, None)])]
        tail = self._choice(choice, event.text, self._none(), finish_reason(choice))
        return [self.envelope([tail])]

    def _none(self) -> dict[str, list] | None:
        return None if self.top is None else _merge()

    def _choice(self, choice: Choice, text: str, logprobs: Any, finish: str | None) -> dict:
        return {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def _echoed(self, choice: Choice) -> dict[str, list] | None:
        """The prompt's tokens, logprobs (the first is null) and offsets."""
        tokens = choice.prompt.tokens
        if self.top is None or not self.echo or tokens is None:
            return None
        scores = self.scores[choice.prompt.index]
        tops: list[dict[str, float] | None] = [None]
        tops += [
            by_text((scores.texts[token_id], lp) for token_id, lp in pairs)
            for pairs in scores.top[1:]
        ]
        self._offsets[choice.index] = len(choice.prompt.text)
        return {
            "tokens": list(tokens.pieces),
            "token_logprobs": [None if lp is None else logprob(lp) for lp in scores.logprobs],
            "top_logprobs": tops,
            "text_offset": [start for start, _ in tokens.offsets],
        }

    def _generated(self, choice: Choice, tokens: list[TokenEvent]) -> dict[str, list]:
        """Generated tokens, each at the character offset where its text starts."""
        offset = self._offsets.get(choice.index, len(choice.prompt.text) if self.echo else 0)
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += 0 if token.special else len(token.piece)
        self._offsets[choice.index] = offset
        return {
            "tokens": [token.piece for token in tokens],
            "token_logprobs": [logprob(token.logprob) for token in tokens],
            "top_logprobs": [
                by_text((alt.text, alt.logprob) for alt in token.top) for token in tokens
            ],
            "text_offset": offsets,
        }


class ChatView(View):
    """/v1/chat/completions. `logprobs`: each token's logprob and alternatives, in the
    chat shape."""

    object_name, chunk_name = "chat.completion", "chat.completion.chunk"

    def __init__(self, meta: Meta, logprobs: bool) -> None:
        super().__init__(meta)
        self.logprobs = logprobs

    def whole(self, choices: list[Choice]) -> Chunk:
        shown = [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": self._logprobs(choice.tokens),
                "finish_reason": finish_reason(choice),
            }
            for choice in choices
        ]
        return _valid(ChatCompletion, {**self.envelope(shown), "usage": usage(choices)})

    def opening(self, choice: Choice) -> list[Chunk]:
        return [self._chunk(choice, {"role": "assistant", "content": ""})]

    def chunks(self, choice: Choice, event: TokenEvent | DoneEvent) -> list[Chunk]:
        if isinstance(event, TokenEvent):
            if not event.text and not self.logprobs:
                return []
            return [self._chunk(choice, {"content": event.text}, self._logprobs([event]))]
        chunks = [self._chunk(choice, {"content": event.text})] if event.text else []
        return chunks + [self._chunk(choice, {}, finish=finish_reason(choice))]

    def _chunk(
        self, choice: Choice, delta: dict, logprobs: Any = None, finish: Any = None
    ) -> Chunk:
        shown = {
            "index": choice.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }
        return _valid(ChatCompletionChunk, self.envelope([shown], chunk=True), ("delta",))

    def _logprobs(self, tokens: list[TokenEvent]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        content = [
            TokenLogprob(
                token=token.piece,
                logprob=logprob(token.logprob),
                bytes=list(token.piece.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=alt.text, logprob=logprob(alt.logprob), bytes=list(alt.text.encode())
                    )
                    for alt in token.top
                ],
            ).model_dump()
            for token in tokens
        ]
        return {"content": content, "refusal": None}


def _valid(schema: type[BaseModel], answer: Chunk, exclude_none_in: tuple = ()) -> Chunk:
    """`answer`, checked against its response model (a drift is a bug, caught in tests).

    Each choice's per-token lists are checked up to their first `_CHECKED` items: they are
    alike, and 16 choices of 1000 tokens with 20 alternatives each took 4.6 s to validate
    in one call that holds the GIL (/health stalled as long)."""
    schema.model_validate({**answer, "choices": [_cut(shown) for shown in answer["choices"]]})
    for shown in answer["choices"]:
        for key in exclude_none_in:
            shown[key] = {k: v for k, v in shown[key].items() if v is not None}
    return answer


_CHECKED = 8


def _cut(shown: dict[str, Any]) -> dict[str, Any]:
    logprobs = shown.get("logprobs")
    if not isinstance(logprobs, dict):
        return shown
    cut = {k: v[:_CHECKED] if isinstance(v, list) else v for k, v in logprobs.items()}
    return {**shown, "logprobs": cut}


def _merge(*parts: dict[str, list] | None) -> dict[str, list]:
    merged: dict[str, list] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for part in parts:
        for key, values in (part or {}).items():
            merged[key] += values
    return merged
