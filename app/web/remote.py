"""/generate and /generate/stream for remote models (LLMVIZ_REMOTE_MODELS).

A request for a remote model becomes one request to the remote's OpenAI API: a prompt or
token ids to `/v1/completions`, messages to `/v1/chat/completions` (the remote applies its
own chat template), with `details` asking for per-token logprobs and `top_logprobs`
alternatives. Its tokens come back as a `RemoteJob`'s events, so the answer, the stream,
the `details` events and the request log are made exactly as for a local model. The
remote stream is opened before the answer starts: a remote that is down, slow or refuses
the request is a plain JSON error (502, 504, or its own 4xx), not a broken stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.engine import SamplingParams
from app.engine.threads import run_off_hub
from app.errors import BadRequest, NotAvailableRemotely
from app.models import prompts
from app.models.remote import RemoteModel
from app.web import parsing, requestlog
from app.web.bodies import GenerateRequest
from app.web.serving import loop
from app.web.serving.run import Choice, Prompt, Run

# The extensions each engine takes beyond OpenAI's fields (vLLM's names; llama.cpp and
# Ollama read top_k; this server reads them all). Asked of an engine that does not take
# one, a request is refused rather than silently sampled otherwise.
_EXTENSIONS = {
    "vllm": {"top_k", "repetition_penalty", "ignore_eos", "return_token_ids"},
    "llmviz": {"top_k", "repetition_penalty", "ignore_eos"},
    "llama.cpp": {"top_k", "ignore_eos"},
    "ollama": {"top_k"},
    "openai": set(),
}
_NOT_REMOTE = (
    "is not available for a remote model: the remote server returns tokens and logprobs only"
)


@dataclass
class _LocalTokens:
    """A remote model's local tokenizer, as app/models/prompts reads a model."""

    model_id: str
    tokenizer: Any


def local_tokens(remote: RemoteModel, what: str) -> _LocalTokens:
    """The remote model's local tokenizer as app/models/prompts reads a model.

    Raises NotAvailableRemotely when LLMVIZ_REMOTE_MODELS gives it none.
    """
    tokenizer = run_off_hub(remote.tokenizer)  # its first use reads it from disk or the hub
    if tokenizer is None:
        raise NotAvailableRemotely(
            f"{what} needs the tokenizer of remote model {remote.model_id!r}: give it a "
            "local `tokenizer` (a folder or hub id) in LLMVIZ_REMOTE_MODELS"
        )
    return _LocalTokens(remote.model_id, tokenizer)


def run_of(remote: RemoteModel, body: GenerateRequest, settings: Settings) -> Run:
    """The request's run of one choice, connected to the remote and reading it.

    Raises BadRequest or NotAvailableRemotely (what the remote cannot do), and the remote
    errors (app.errors) when it cannot be reached or refuses.
    """
    if body.attention is not None:
        raise NotAvailableRemotely(f"live attention (`attention`) {_NOT_REMOTE}")
    if body.interventions:
        raise NotAvailableRemotely(f"`interventions` {_NOT_REMOTE}", param="interventions")
    loop.check_limit(body.max_new_tokens, settings, "max_new_tokens")
    endpoint, request, text, ids = _request(remote, body)
    fields = body.model_dump(include=set(SamplingParams.__dataclass_fields__))
    params = SamplingParams(**fields, logprobs=body.details)
    job = remote.job(endpoint, request, ids, params)
    run = Run(remote.model_id, [Choice(0, Prompt(0, text, ids), job)], requestlog.record())
    job.connect()
    job.start()
    return run


def _request(
    remote: RemoteModel, body: GenerateRequest
) -> tuple[str, dict[str, Any], str, list[int]]:
    """The remote endpoint, its request, the prompt's text and its ids (where a local
    tokenizer gives them)."""
    given = parsing.prompt_input(body)
    local = run_off_hub(remote.tokenizer)
    text, ids = "", list[int]()
    if local is not None:
        text, ids = run_off_hub(prompts.encode, _LocalTokens(remote.model_id, local), given)
    request: dict[str, Any] = {
        "max_tokens": body.max_new_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "stream_options": {"include_usage": True},
        **({"seed": body.seed} if body.seed is not None else {}),
        **({"stop": list(body.stop)} if body.stop else {}),
        **extensions(
            remote,
            {
                "top_k": body.top_k,
                "repetition_penalty": body.repetition_penalty,
                "ignore_eos": body.ignore_eos,
            },
        ),
    }
    if given.messages is not None:
        request["messages"] = given.messages
        if body.details:
            request.update(logprobs=True, top_logprobs=body.top_logprobs)
        return "chat/completions", request, text, ids
    if given.token_ids is not None:
        request["prompt"] = list(given.token_ids)
        ids = list(given.token_ids)
    else:
        request["prompt"] = text = given.prompt or ""
    if body.details:
        request["logprobs"] = body.top_logprobs
    return "completions", request, text, ids


def extensions(remote: RemoteModel, given: dict[str, Any]) -> dict[str, Any]:
    """The sampling extensions a request sets (`top_k`, `repetition_penalty`, `ignore_eos`;
    unset or at their defaults are left out), checked against the remote's engine.

    Raises BadRequest naming the first the engine does not take.
    """
    engine = remote.spec.engine
    taken = _EXTENSIONS[engine]
    defaults = {"top_k": 0, "repetition_penalty": 1.0, "ignore_eos": False}
    asked = {k: v for k, v in given.items() if v is not None and v != defaults[k]}
    refused = sorted(set(asked) - taken)
    if refused:
        raise BadRequest(
            f"remote model {remote.model_id!r} runs on {engine}, which does not take "
            f"{', '.join(refused)}",
            param=refused[0],
        )
    if "return_token_ids" in taken:
        asked["return_token_ids"] = True  # the generated tokens' ids (vLLM's extension)
    return asked
