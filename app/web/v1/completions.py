"""POST /v1/completions and POST /v1/chat/completions: OpenAI's API over the same engine,
batching, limits, keys, logs and metrics as /generate.

A request becomes a run of `n` choices per prompt (see `choices`), served by the same
loop as /generate (`serving.loop`); `views` shows it as one JSON body, or `streams` as
`data: {chunk}` events ended by `data: [DONE]`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request

from app import analysis, models
from app.config import Settings
from app.engine.interventions import InterventionSet
from app.engine.threads import run_off_hub
from app.errors import APIError, BadRequest
from app.models import LoadedModel, ModelProfile, ModelSpec, PromptInput, prompts
from app.models.remote import RemoteModel
from app.web import parsing, requestlog, sse
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.large import reply_off_hub
from app.web.serving import loop
from app.web.serving.run import Choice, Prompt, Run
from app.web.v1 import choices, remote
from app.web.v1.answers import ChatCompletion, Completion, OpenAIErrorResponse
from app.web.v1.bodies import ChatCompletionRequest, CompletionRequest
from app.web.v1.streams import ChunkFramer
from app.web.v1.views import ChatView, CompletionView, Meta, View

bp = Blueprint("v1_completions", __name__, url_prefix="/v1")

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@bp.post("/completions")
@documented(CompletionRequest, Completion, errors=OpenAIErrorResponse, streams=True)
def completions():
    """OpenAI's text completions: one or more prompts, n choices each, optionally streamed."""
    body: CompletionRequest = parsing.read_body(CompletionRequest)
    settings = parsing.settings()
    top = body.logprobs
    far = parsing.remote_model(body.model)
    if far is not None:
        max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        planned = remote.completion_choices(far, body, max_tokens, settings)
        meta = Meta(f"cmpl-{uuid.uuid4().hex}", int(time.time()), far.model_id)
        return _answer_remote(
            far, body, planned, CompletionView(meta, bool(body.echo), top, {}), settings
        )
    scoring = bool(body.echo) and top is not None  # scores the prompt: needs the weights now
    target = _target(body.model, cold_ok=bool(body.stream) and not scoring)
    profile = target.profile
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    loop.check_limit(max_tokens, settings, "max_tokens")
    prompt_list = [choices.tokenize(profile, given, i) for i, given in enumerate(body.prompts())]
    for prompt in prompt_list:
        loop.check_context(profile, len(prompt.ids), max_tokens, "max_tokens")
    params = choices.sampling(profile, body, max_tokens, top)
    intervened = choices.interventions_of(profile, body, prompt_list)
    planned = choices.plan(prompt_list, body.n or 1, params, body.stops, intervened)
    choices.check_queue(planned, settings)
    scores = {}
    if scoring and target.lm is not None:
        scores = _score(target.lm, prompt_list, top or 0, intervened)
    meta = Meta(f"cmpl-{uuid.uuid4().hex}", int(time.time()), profile.model_id)
    view = CompletionView(meta, bool(body.echo), top, scores)
    return _answer(target, body, planned, view, settings)


@bp.post("/chat/completions")
@documented(ChatCompletionRequest, ChatCompletion, errors=OpenAIErrorResponse, streams=True)
def chat_completions():
    """OpenAI's chat completions: the messages go through the model's chat template."""
    body: ChatCompletionRequest = parsing.read_body(ChatCompletionRequest)
    settings = parsing.settings()
    far = parsing.remote_model(body.model)
    if far is not None:
        planned = remote.chat_choices(far, body, settings)
        meta = Meta(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), far.model_id)
        return _answer_remote(far, body, planned, ChatView(meta, bool(body.logprobs)), settings)
    target = _target(body.model, cold_ok=bool(body.stream))
    profile = target.profile
    try:
        text, ids = run_off_hub(prompts.encode, profile, PromptInput(messages=body.chat()))
    except BadRequest as exc:
        raise BadRequest(exc.message, param="messages") from None
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = body.token_limit or choices.room(profile, len(ids), settings)
    loop.check_limit(max_tokens, settings, field)
    loop.check_context(profile, len(ids), max_tokens, field)
    top = (body.top_logprobs or 0) if body.logprobs else None
    params = choices.sampling(profile, body, max_tokens, top)
    prompt = Prompt(0, text, ids)
    intervened = choices.interventions_of(profile, body, [prompt])
    planned = choices.plan([prompt], body.n or 1, params, body.stops, intervened)
    choices.check_queue(planned, settings)
    meta = Meta(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), profile.model_id)
    view = ChatView(meta, bool(body.logprobs))
    return _answer(target, body, planned, view, settings)


@dataclass(frozen=True)
class _Target:
    """The model a request names: `lm` when its weights are in memory (or were loaded for
    it); None for a stream that will wait for them behind pings."""

    spec: ModelSpec
    profile: ModelProfile
    lm: LoadedModel | None


def _target(model_id: str | None, cold_ok: bool) -> _Target:
    """The model asked for; its errors name the `model` field.

    With `cold_ok` (a stream), a model whose weights are not in memory yet is not waited
    for here: its tokenizer and config load in moments, so every bad request is still a
    plain JSON error, and the weights then load while the stream's headers go out and its
    pings (with the load's progress) keep it open, as on /generate/stream.
    """
    try:
        spec = parsing.model_spec(model_id)
        lm = models.cache.peek(spec) if cold_ok else models.cache.get(spec)
        if lm is None:
            return _Target(spec, run_off_hub(models.load_profile, spec), None)
        return _Target(spec, lm.profile, lm)
    except APIError as exc:
        exc.param = exc.param or "model"
        raise


def _answer_remote(
    far: RemoteModel, body: Any, planned: list[Choice], view: View, settings: Settings
) -> Response:
    """Connect a remote model's choices and answer as `_answer` does."""
    run = Run(far.model_id, planned, requestlog.record())
    try:
        remote.start(run)
    except APIError as exc:
        exc.param = exc.param or "model"
        raise
    return _respond(run, body, view, settings, None)


def _answer(
    target: _Target, body: Any, planned: list[Choice], view: View, settings: Settings
) -> Response:
    """Queue the run (or, for a cold stream, start the load); answer with one JSON body or
    a stream."""
    run = Run(target.profile.model_id, planned, requestlog.record())
    if target.lm is not None:
        run.submit(target.lm)
    else:
        models.cache.begin(target.spec, target.profile)
    return _respond(run, body, view, settings, None if target.lm is not None else target.spec)


def _respond(
    run: Run, body: Any, view: View, settings: Settings, cold: ModelSpec | None
) -> Response:
    """One JSON body, or a stream (waiting for the `cold` model's load first)."""
    if body.user is not None:
        run.record["user"] = body.user
    ping, client_gone = settings.sse_ping_seconds, disconnect_probe(request.environ)
    if not body.stream:
        loop.fold(run, ping, client_gone)
        # n choices of up to LLMVIZ_MAX_NEW_TOKENS tokens, each with up to 20 alternatives:
        # built and encoded off the hub (n=16 with 20 alternatives stalled /health 8.7 s).
        return reply_off_hub(lambda: view.whole(run.choices))
    usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = loop.stream(run, ChunkFramer(view, usage), ping, client_gone, cold=cold)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _score(
    lm: LoadedModel,
    prompt_list: list[Prompt],
    top: int,
    intervened: dict[int, InterventionSet],
) -> dict[int, analysis.TokenScores]:
    """Each prompt's token logprobs (for `echo`), one forward pass per prompt, by the model
    as the prompt's interventions change it."""
    scores = {}
    for prompt in prompt_list:
        task = analysis.scoring_task(prompt.ids, top, intervened.get(prompt.index))
        models.submit(lm, task)
        scores[prompt.index] = task.result(disconnect_probe(request.environ))
    return scores
