"""/v1/completions and /v1/chat/completions for remote models (LLMVIZ_REMOTE_MODELS).

Each choice is one streamed request to the remote's own endpoint (choice i of a seeded
request with seed + i, as for a local model), read as a `RemoteJob`; the answer and the
stream chunks are then made by this server's views, with its ids, usage, keys, limits and
logs. What needs the weights here is refused: `echo` with `logprobs` (scoring the prompt).
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.engine import SamplingParams
from app.errors import BadRequest, NotAvailableRemotely
from app.models.remote import RemoteJob, RemoteModel
from app.web.remote import extensions
from app.web.serving import loop
from app.web.serving.run import Choice, Prompt, Run
from app.web.v1.bodies import ChatCompletionRequest, CompletionRequest, _Sampling


def completion_choices(
    far: RemoteModel, body: CompletionRequest, max_tokens: int, settings: Settings
) -> list[Choice]:
    """`n` choices per prompt, each a RemoteJob to the remote's /v1/completions."""
    if body.echo and body.logprobs is not None:
        raise NotAvailableRemotely(
            "`echo` with `logprobs` scores the prompt, which needs the model itself: it is "
            "not available for a remote model",
            param="echo",
        )
    loop.check_limit(max_tokens, settings, "max_tokens")
    prompts = []
    for index, given in enumerate(body.prompts()):
        if body.echo and not isinstance(given, str):
            raise NotAvailableRemotely(
                "`echo` of token ids needs their text: not available for a remote model",
                param="echo",
            )
        prompts.append(Prompt(index, given if isinstance(given, str) else "", _ids(given)))
    top = body.logprobs
    request = {"max_tokens": max_tokens, **({"logprobs": top} if top is not None else {})}
    return _plan(far, "completions", body, prompts, request, max_tokens, top, settings)


def chat_choices(far: RemoteModel, body: ChatCompletionRequest, settings: Settings) -> list[Choice]:
    """`n` choices, each a RemoteJob to the remote's /v1/chat/completions (its template)."""
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = body.token_limit or settings.max_new_tokens
    loop.check_limit(max_tokens, settings, field)
    top = (body.top_logprobs or 0) if body.logprobs else None
    request: dict[str, Any] = {"messages": body.chat(), "max_tokens": max_tokens}
    if top is not None:
        request.update(logprobs=True, top_logprobs=top)
    prompts = [Prompt(0, "", [])]
    return _plan(far, "chat/completions", body, prompts, request, max_tokens, top, settings)


def start(run: Run) -> None:
    """Connect every choice to the remote, then read them all; if one cannot connect, the
    others are closed and its error raised."""
    jobs = [job for job in run.jobs if isinstance(job, RemoteJob)]
    try:
        for job in jobs:
            job.connect()
    except BaseException:
        run.cancel()
        raise
    for job in jobs:
        job.start()


def _refuse_interventions(body: _Sampling) -> None:
    if body.interventions:
        raise NotAvailableRemotely(
            "`interventions` need the model itself: not available for a remote model",
            param="interventions",
        )


def _plan(
    far: RemoteModel,
    endpoint: str,
    body: _Sampling,
    prompts: list[Prompt],
    request: dict[str, Any],
    max_tokens: int,
    top: int | None,
    settings: Settings,
) -> list[Choice]:
    _refuse_interventions(body)
    given = {"top_k": body.top_k, "repetition_penalty": body.repetition_penalty}
    shared = {
        **request,
        **{k: v for k, v in _openai_fields(body).items() if v is not None},
        **extensions(far, {**given, "ignore_eos": body.ignore_eos}),
        "stream_options": {"include_usage": True},
    }
    n = body.n or 1
    if len(prompts) * n > settings.max_queue:
        raise BadRequest(
            f"this request asks for {len(prompts) * n} generations (prompts times n); at most "
            f"{settings.max_queue} go to a remote at once (LLMVIZ_MAX_QUEUE)",
            param="n",
        )
    params = SamplingParams(
        max_new_tokens=max_tokens, logprobs=top is not None, top_logprobs=top or 0
    )
    choices: list[Choice] = []
    for prompt in prompts:
        for _ in range(n):
            index = len(choices)
            this = dict(shared)
            if endpoint == "completions":  # a text prompt has no ids here, an ids prompt no text
                this["prompt"] = prompt.ids or prompt.text
            if body.seed is not None:
                this["seed"] = (body.seed + index) % 2**64
            choices.append(Choice(index, prompt, far.job(endpoint, this, prompt.ids, params)))
    return choices


def _openai_fields(body: _Sampling) -> dict[str, Any]:
    """The sampling fields every OpenAI-compatible server takes, as the client sent them."""
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": list(body.stop) if body.stop else None,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logit_bias": body.logit_bias,
    }


def _ids(given: str | list[int]) -> list[int]:
    return [] if isinstance(given, str) else list(given)
