"""POST /v1/completions and POST /v1/chat/completions: OpenAI's API over the same engine,
batching, limits, keys, logs and metrics as /generate.

A request becomes a run of `n` choices per prompt (see `choices`), served by the same
loop as /generate (`serving.loop`); `views` shows it as one JSON body, or `streams` as
`data: {chunk}` events ended by `data: [DONE]`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, Response, request

from app import analysis, models
from app.config import Settings
from app.engine.threads import run_off_hub
from app.errors import APIError, BadRequest
from app.models import LoadedModel, PromptInput, prompts
from app.web import parsing, requestlog, sse
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.large import reply_off_hub
from app.web.serving import loop
from app.web.serving.run import Choice, Prompt, Run
from app.web.v1 import choices
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
    lm = _model(body.model)
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    loop.check_limit(max_tokens, settings, "max_tokens")
    prompt_list = [choices.tokenize(lm, given, i) for i, given in enumerate(body.prompts())]
    for prompt in prompt_list:
        loop.check_context(lm.profile, len(prompt.ids), max_tokens, "max_tokens")
    top = body.logprobs
    params = choices.sampling(lm, body, max_tokens, top)
    planned = choices.plan(prompt_list, body.n or 1, params, body.stops)
    choices.check_queue(planned, settings)
    scores = {}
    if body.echo and top is not None:
        scores = _score(lm, prompt_list, top)
    meta = Meta(f"cmpl-{uuid.uuid4().hex}", int(time.time()), lm.model_id)
    view = CompletionView(meta, bool(body.echo), top, scores)
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
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = body.token_limit or choices.room(lm, len(ids), settings)
    loop.check_limit(max_tokens, settings, field)
    loop.check_context(lm.profile, len(ids), max_tokens, field)
    top = (body.top_logprobs or 0) if body.logprobs else None
    params = choices.sampling(lm, body, max_tokens, top)
    planned = choices.plan([Prompt(0, text, ids)], body.n or 1, params, body.stops)
    choices.check_queue(planned, settings)
    meta = Meta(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), lm.model_id)
    view = ChatView(meta, bool(body.logprobs))
    return _answer(lm, body, planned, view, settings)


def _model(model_id: str | None) -> LoadedModel:
    """The model asked for, loaded; its errors name the `model` field."""
    try:
        return models.cache.get(parsing.model_spec(model_id))
    except APIError as exc:
        exc.param = exc.param or "model"
        raise


def _answer(
    lm: LoadedModel, body: Any, planned: list[Choice], view: View, settings: Settings
) -> Response:
    """Queue the run; answer with one JSON body or a stream."""
    run = Run(lm.model_id, planned, requestlog.record())
    run.submit(lm)
    if body.user is not None:
        run.record["user"] = body.user
    ping, client_gone = settings.sse_ping_seconds, disconnect_probe(request.environ)
    if not body.stream:
        loop.fold(run, ping, client_gone)
        # n choices of up to LLMVIZ_MAX_NEW_TOKENS tokens, each with up to 20 alternatives:
        # built and encoded off the hub (n=16 with 20 alternatives stalled /health 8.7 s).
        return reply_off_hub(lambda: view.whole(run.choices))
    usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = loop.stream(run, ChunkFramer(view, usage), ping, client_gone)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _score(lm: LoadedModel, prompt_list: list[Prompt], top: int) -> dict[int, analysis.TokenScores]:
    """Each prompt's token logprobs (for `echo`), one forward pass per prompt."""
    scores = {}
    for prompt in prompt_list:
        task = analysis.scoring_task(prompt.ids, top)
        models.submit(lm, task)
        scores[prompt.index] = task.result(disconnect_probe(request.environ))
    return scores
