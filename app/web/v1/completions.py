"""POST /v1/completions and POST /v1/chat/completions: OpenAI's API over the same engine,
batching, limits, keys, logs and metrics as /generate.

A request becomes `n` choices per prompt (see `choices`); an answer is either one
JSON body or a stream of `data: {chunk}` events ended by `data: [DONE]`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel

from app import analysis, models
from app.config import Settings
from app.engine import DoneEvent, ErrorEvent, SamplingParams, TokenEvent
from app.engine.threads import run_off_hub
from app.errors import APIError, BadRequest, GenerationFailed, ShuttingDown, translate
from app.models import LoadedModel, PromptInput, prompts
from app.web import parsing, requestlog, sse
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.v1 import choices
from app.web.v1.answers import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    OpenAIErrorResponse,
    TokenLogprob,
    TopLogprob,
)
from app.web.v1.bodies import ChatCompletionRequest, CompletionRequest, logit_bias
from app.web.v1.choices import Choice, Prompt
from app.web.v1.errors import error_body

log = logging.getLogger(__name__)
bp = Blueprint("v1_completions", __name__, url_prefix="/v1")

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
NO_LOGPROB = -9999.0  # what OpenAI sends for a logprob of -inf (JSON has no infinities)
DONE = sse.format_event("[DONE]")  # the end of every stream, after its last chunk


@dataclass(frozen=True)
class Meta:
    """What every chunk of one answer repeats."""

    id: str
    created: int
    model: str


@bp.post("/completions")
@documented(CompletionRequest, Completion, errors=OpenAIErrorResponse, streams=True)
def completions():
    """OpenAI's text completions: one or more prompts, n choices each, optionally streamed."""
    body: CompletionRequest = parsing.read_body(CompletionRequest)
    settings = parsing.settings()
    lm = _model(body.model)
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    _check_limit(max_tokens, settings, "max_tokens")
    prompt_list = [choices.tokenize(lm, given, i) for i, given in enumerate(body.prompts())]
    for prompt in prompt_list:
        _check_context(lm, prompt, max_tokens, "max_tokens")
    top = body.logprobs
    params = _sampling(lm, body, max_tokens, top)
    planned = choices.plan(prompt_list, body.n or 1, params, body.stops)
    _check_queue(planned, settings)
    scores = {}
    if body.echo and top is not None:
        scores = _score(lm, prompt_list, top)
    meta = Meta(f"cmpl-{uuid.uuid4().hex}", int(time.time()), lm.model_id)
    view = _CompletionView(meta, bool(body.echo), top, scores)
    return _answer(lm, body, planned, view, settings)


@bp.post("/chat/completions")
@documented(ChatCompletionRequest, ChatCompletion, errors=OpenAIErrorResponse, streams=True)
def chat_completions():
    """OpenAI's chat completions: the messages go through the model's chat template."""
    body: ChatCompletionRequest = parsing.read_body(ChatCompletionRequest)
    settings = parsing.settings()
    lm = _model(body.model)
    try:
        text, ids = run_off_hub(prompts.encode, lm, PromptInput(messages=body.chat()))
    except BadRequest as exc:
        raise BadRequest(exc.message, param="messages") from None
    prompt = Prompt(0, text, ids)
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = body.token_limit or _room(lm, len(ids), settings)
    _check_limit(max_tokens, settings, field)
    _check_context(lm, prompt, max_tokens, field)
    top = (body.top_logprobs or 0) if body.logprobs else None
    planned = choices.plan([prompt], body.n or 1, _sampling(lm, body, max_tokens, top), body.stops)
    _check_queue(planned, settings)
    meta = Meta(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), lm.model_id)
    view = _ChatView(meta, bool(body.logprobs))
    return _answer(lm, body, planned, view, settings)


def _model(model_id: str | None) -> LoadedModel:
    """The model asked for, loaded; its errors name the `model` field."""
    try:
        return models.cache.get(parsing.model_spec(model_id))
    except APIError as exc:
        exc.param = exc.param or "model"
        raise


def _answer(lm: LoadedModel, body: Any, planned: list[Choice], view: _View, settings: Settings):
    """Queue the choices; answer with one JSON body or a stream."""
    record = requestlog.record()
    choices.submit(lm, planned)
    client_gone = disconnect_probe(request.environ)
    if not body.stream:
        try:
            choices.finish(planned, settings.sse_ping_seconds, client_gone)
        finally:
            choices.account(record, lm.model_id, planned, body.user)
        return jsonify(view.whole(planned))
    usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = _stream(
        view, planned, usage, settings.sse_ping_seconds, client_gone, record, body.user
    )
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _stream(
    view: _View,
    planned: list[Choice],
    include_usage: bool,
    ping: float,
    client_gone: Callable[[], bool],
    record: dict[str, Any],
    user: str | None,
) -> Iterator[bytes]:
    # Values are passed in: the request context is gone by the time this runs.
    def data(chunk: dict[str, Any]) -> bytes:
        if include_usage:
            chunk.setdefault("usage", None)  # OpenAI: null on all but the usage chunk
        return sse.format_event(json.dumps(chunk, ensure_ascii=False))

    try:
        yield b""  # the headers go out now, before the first token
        for choice in planned:
            yield from map(data, view.opening(choice))
        for item in choices.interleave(planned, ping):
            if item is None:
                yield sse.format_comment("ping")
            else:
                choice, event = item
                if isinstance(event, ErrorEvent):
                    raise GenerationFailed(event.message)
                if isinstance(event, DoneEvent) and event.finish_reason == "shutdown":
                    raise ShuttingDown
                yield from map(data, view.chunks(choice, event))
            if client_gone():
                return
        if include_usage:
            yield data({**view.envelope([], chunk=True), "usage": choices.usage(planned)})
        yield DONE
    except Exception as exc:
        error = translate(exc)
        if error is None:
            log.exception("stream failed", exc_info=exc)
            error = GenerationFailed("internal server error")
        yield sse.format_event(json.dumps(error_body(error.status, error.message, error.code)))
        yield DONE
    finally:
        choices.cancel(planned)
        choices.account(record, view.meta.model, planned, user)


class _View:
    """How one endpoint shows choices: whole (`whole`) or as stream chunks."""

    object_name = ""  # of the whole answer
    chunk_name = ""  # of a stream's chunks

    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    def envelope(self, shown: list[dict[str, Any]], chunk: bool = False) -> dict[str, Any]:
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

    def whole(self, planned: list[Choice]) -> dict[str, Any]:
        """The one JSON answer of a request that is not streamed."""
        raise NotImplementedError

    def opening(self, choice: Choice) -> list[dict[str, Any]]:
        """The chunks a choice's stream starts with, before its first token."""
        raise NotImplementedError

    def chunks(self, choice: Choice, event: TokenEvent | DoneEvent) -> list[dict[str, Any]]:
        """The chunks one event of a choice becomes (none for a token that adds nothing)."""
        raise NotImplementedError


class _CompletionView(_View):
    """`echo` prefixes the prompt; `top` (None: no logprobs) is the alternatives per token;
    `scores` are the prompts' own logprobs, for echo."""

    object_name = chunk_name = "text_completion"

    def __init__(
        self, meta: Meta, echo: bool, top: int | None, scores: dict[int, analysis.TokenScores]
    ) -> None:
        super().__init__(meta)
        self.echo, self.top, self.scores = echo, top, scores
        self._offsets: dict[int, int] = {}  # per choice: where its next token starts

    def whole(self, planned: list[Choice]) -> dict[str, Any]:
        shown = []
        for choice in planned:
            logprobs = None
            if self.top is not None:
                logprobs = _merge(
                    self._echoed(choice), self._generated(choice, choice.transcript.tokens)
                )
            text = (choice.prompt.text if self.echo else "") + choice.transcript.text
            shown.append(self._choice(choice, text, logprobs, choice.finish_reason))
        return _valid(Completion, {**self.envelope(shown), "usage": choices.usage(planned)})

    def opening(self, choice: Choice) -> list[dict[str, Any]]:
        chunks = []
        if self.echo:
            shown = self._choice(choice, choice.prompt.text, self._echoed(choice), None)
            chunks.append(self.envelope([shown]))
        if choice.job is None:  # max_tokens 0: nothing to generate
            chunks.append(self.envelope([self._choice(choice, "", self._none(), "length")]))
        return chunks

    def chunks(self, choice: Choice, event: TokenEvent | DoneEvent) -> list[dict[str, Any]]:
        if isinstance(event, TokenEvent):
            if not event.text and self.top is None:
                return []
            logprobs = None if self.top is None else self._generated(choice, [event])
            return [self.envelope([self._choice(choice, event.text, logprobs, None)])]
        tail = self._choice(choice, event.text, self._none(), choice.finish_reason)
        return [self.envelope([tail])]

    def _none(self) -> dict[str, list] | None:
        return None if self.top is None else _merge()

    def _choice(self, choice: Choice, text: str, logprobs: Any, finish: str | None) -> dict:
        return {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def _echoed(self, choice: Choice) -> dict[str, list] | None:
        """The prompt's tokens, logprobs (the first is null) and offsets."""
        if self.top is None or not self.echo:
            return None
        tokens, scores = choice.prompt.tokens, self.scores[choice.prompt.index]
        tops: list[dict[str, float] | None] = [None]
        tops += [
            _by_text((scores.texts[token_id], lp) for token_id, lp in pairs)
            for pairs in scores.top[1:]
        ]
        self._offsets[choice.index] = len(choice.prompt.text)
        return {
            "tokens": list(tokens.pieces),
            "token_logprobs": [None if lp is None else _logprob(lp) for lp in scores.logprobs],
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
            "token_logprobs": [_logprob(token.logprob) for token in tokens],
            "top_logprobs": [
                _by_text((alt.text, alt.logprob) for alt in token.top) for token in tokens
            ],
            "text_offset": offsets,
        }


class _ChatView(_View):
    """`logprobs`: each token's logprob and alternatives, in the chat shape."""

    object_name, chunk_name = "chat.completion", "chat.completion.chunk"

    def __init__(self, meta: Meta, logprobs: bool) -> None:
        super().__init__(meta)
        self.logprobs = logprobs

    def whole(self, planned: list[Choice]) -> dict[str, Any]:
        shown = [
            {
                "index": choice.index,
                "message": {
                    "role": "assistant",
                    "content": choice.transcript.text,
                    "refusal": None,
                },
                "logprobs": self._logprobs(choice.transcript.tokens),
                "finish_reason": choice.finish_reason,
            }
            for choice in planned
        ]
        return _valid(ChatCompletion, {**self.envelope(shown), "usage": choices.usage(planned)})

    def opening(self, choice: Choice) -> list[dict[str, Any]]:
        return [self._chunk(choice, {"role": "assistant", "content": ""})]

    def chunks(self, choice: Choice, event: TokenEvent | DoneEvent) -> list[dict[str, Any]]:
        if isinstance(event, TokenEvent):
            if not event.text and not self.logprobs:
                return []
            return [self._chunk(choice, {"content": event.text}, self._logprobs([event]))]
        chunks = [self._chunk(choice, {"content": event.text})] if event.text else []
        return chunks + [self._chunk(choice, {}, finish=choice.finish_reason)]

    def _chunk(self, choice: Choice, delta: dict, logprobs: Any = None, finish: Any = None) -> dict:
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
                logprob=_logprob(token.logprob),
                bytes=list(token.piece.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=alt.text, logprob=_logprob(alt.logprob), bytes=list(alt.text.encode())
                    )
                    for alt in token.top
                ],
            ).model_dump()
            for token in tokens
        ]
        return {"content": content, "refusal": None}


def _valid(schema: type[BaseModel], answer: dict[str, Any], exclude_none_in: tuple = ()) -> dict:
    """`answer`, checked against its response model (a drift is a bug, caught in tests)."""
    schema.model_validate(answer)
    for shown in answer["choices"]:
        for key in exclude_none_in:
            shown[key] = {k: v for k, v in shown[key].items() if v is not None}
    return answer


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


def _by_text(alternatives: Iterable[tuple[str, float]]) -> dict[str, float]:
    """OpenAI's {text: logprob}, likeliest first; tokens that read alike keep the likeliest."""
    shown: dict[str, float] = {}
    for text, logprob in alternatives:
        shown.setdefault(text, _logprob(logprob))
    return shown


def _logprob(value: float | None) -> float:
    # JSON has no -Infinity: OpenAI's own answers show a ruled-out token as -9999.0.
    return value if value is not None and math.isfinite(value) else NO_LOGPROB


def _sampling(lm: LoadedModel, body: Any, max_tokens: int, top: int | None) -> SamplingParams:
    """The engine's parameters; OpenAI's defaults: temperature 1 and top_p 1."""
    bias = logit_bias(body)
    if bias:
        try:
            prompts.check_token_ids(lm, [token_id for token_id, _ in bias])
        except BadRequest as exc:
            raise BadRequest(f"logit_bias: {exc.message}", param="logit_bias") from None
    top_p = 1.0 if body.top_p is None else body.top_p
    top_k = body.top_k or 0
    if top_p == 0:  # nothing but the likeliest token
        top_p, top_k = 1.0, 1
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
        seed=body.seed,
        ignore_eos=bool(body.ignore_eos),
        logprobs=top is not None,
        top_logprobs=top or 0,
    )


def _score(lm: LoadedModel, prompt_list: list[Prompt], top: int) -> dict[int, analysis.TokenScores]:
    """Each prompt's token logprobs (for `echo`), one forward pass per prompt."""
    scores = {}
    for prompt in prompt_list:
        task = analysis.scoring_task(prompt.ids, top)
        models.submit(lm, task)
        scores[prompt.index] = task.result(disconnect_probe(request.environ))
    return scores


def _check_limit(max_tokens: int, settings: Settings, field: str) -> None:
    if max_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"{field} must be at most {settings.max_new_tokens} (LLMVIZ_MAX_NEW_TOKENS)",
            param=field,
        )


def _check_queue(planned: list[Choice], settings: Settings) -> None:
    # More jobs than the queue holds could never be queued at once: retrying would not help.
    if sum(choice.job is not None for choice in planned) > settings.max_queue:
        raise BadRequest(
            f"this request asks for {len(planned)} generations (prompts times n); at most "
            f"{settings.max_queue} fit in the queue (LLMVIZ_MAX_QUEUE)",
            param="n",
        )


def _check_context(lm: LoadedModel, prompt: Prompt, max_tokens: int, field: str) -> None:
    try:
        lm.check_context(len(prompt.ids), max_tokens)
    except APIError as exc:
        raise BadRequest(exc.message.replace("max_new_tokens", field), param=field) from None


def _room(lm: LoadedModel, prompt_tokens: int, settings: Settings) -> int:
    """A chat's default token limit: the rest of the context, up to LLMVIZ_MAX_NEW_TOKENS."""
    limit = lm.context_length
    room = (
        settings.max_new_tokens
        if limit is None
        else min(settings.max_new_tokens, limit - prompt_tokens)
    )
    if room < 1:
        raise BadRequest(
            f"the messages fill the model's context ({limit} tokens): no room to answer",
            param="messages",
        )
    return room
