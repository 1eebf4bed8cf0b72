"""The HTTP API blueprint: validate, get the model, run the engine, shape the answer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app import inputs, metrics, models, requestlog, responses, sse
from app.concurrency import run_off_hub
from app.config import Settings
from app.connection import disconnect_probe
from app.errors import APIError, BadRequest, GenerationFailed, ShuttingDown
from app.generation import AttentionWatch
from app.jobs import DoneEvent, ErrorEvent, GenerationJob, TokenEvent
from app.models import LoadedModel, ModelSpec
from app.sampling import SamplingParams
from app.schemas import DetokenizeRequest, GenerateRequest, TokenizeRequest

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


@bp.get("/health")
def health():
    """Liveness: answers at once, whatever the models are doing."""
    return jsonify(ok=True)


@bp.post("/tokenize")
def tokenize():
    """Split a prompt into token ids, the text each token adds, and where it sits."""
    body = inputs.read_body(TokenizeRequest)
    lm = models.cache.get(inputs.model_spec(body.model_id))
    tokens = run_off_hub(inputs.tokenize, lm, body)
    requestlog.record().update(model=lm.spec.model_id, prompt_tokens=len(tokens.ids))
    return jsonify(
        token_ids=tokens.ids,
        tokens=tokens.pieces,
        count=len(tokens.ids),
        offsets=tokens.offsets,
        special=tokens.special,
        prompt=tokens.prompt if body.messages is not None else None,
    )


@bp.post("/detokenize")
def detokenize():
    """Turn token ids back into text."""
    body = inputs.read_body(DetokenizeRequest)
    lm = models.cache.get(inputs.model_spec(body.model_id))
    requestlog.record()["model"] = lm.spec.model_id
    text = lm.tokenizer.decode(
        inputs.check_token_ids(lm, body.token_ids),
        skip_special_tokens=body.skip_special_tokens,
        clean_up_tokenization_spaces=False,
    )
    return jsonify(text=text)


@bp.post("/generate")
def generate():
    """Generate a continuation and answer with the whole text at once."""
    body = inputs.read_body(GenerateRequest)
    settings = inputs.settings()
    lm = models.cache.get(inputs.model_spec(body.model_id))
    job, prompt = _submit(lm, body, settings)
    pieces, tokens, done = [], [], None
    try:
        for event in job.events(settings.sse_ping_seconds):
            if isinstance(event, ErrorEvent):
                raise GenerationFailed(event.message)
            if isinstance(event, TokenEvent):
                tokens.append(event)
            elif isinstance(event, DoneEvent):
                done = event
            if event is not None:
                pieces.append(event.text)
    finally:
        job.cancel()  # a no-op when finished; stops the worker if this handler dies early
    text = "".join(pieces)
    account(requestlog.record(), lm.spec.model_id, done, prompt, text)
    if done.finish_reason == "shutdown":
        raise ShuttingDown
    answer: dict[str, Any] = {"text": prompt + text if body.return_full_text else text}
    if body.details:
        answer["details"] = responses.details(done, tokens)
    return jsonify(answer)


@bp.post("/generate/stream")
def generate_stream():
    """Generate a continuation as Server-Sent Events, one event per piece of text."""
    body = inputs.read_body(GenerateRequest)
    settings = inputs.settings()
    spec = inputs.model_spec(body.model_id)
    prepared = None
    if (lm := models.cache.peek(spec)) is not None:
        prepared = _submit(lm, body, settings)  # every error is still a plain JSON answer here
    else:
        run_off_hub(models.check_available, spec)  # an unknown model is a 404, not an event
        models.cache.begin(spec)  # load while the headers go out
    stream = _stream(
        spec, body, prepared, settings, disconnect_probe(request.environ), requestlog.record()
    )
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _stream(
    spec: ModelSpec,
    body: GenerateRequest,
    prepared: tuple[GenerationJob, str] | None,
    settings: Settings,
    client_gone: Callable[[], bool],
    record: dict[str, Any],
) -> Iterator[bytes]:
    # Values are passed in: the request context is gone by the time this runs.
    ping = settings.sse_ping_seconds
    job = None
    try:
        yield b""  # the headers go out now, before the prompt is processed
        if prepared is None:
            lm = yield from _await_model(spec, ping)
            prepared = _submit(lm, body, settings)
        job, prompt = prepared
        if body.return_full_text:
            yield sse.format_event(prompt)
        pieces = []
        for event in job.events(ping):
            if client_gone():
                record["finish_reason"] = "disconnected"
                return  # `finally` cancels the job
            if isinstance(event, TokenEvent | DoneEvent):
                pieces.append(event.text)
            if isinstance(event, DoneEvent):
                account(record, spec.model_id, event, prompt, "".join(pieces))
            yield from responses.stream_event(event, body.details)
    except APIError as exc:
        yield responses.error_event(exc)
    except Exception:
        log.exception("stream failed")
        yield responses.error_event(GenerationFailed("internal server error"))
    finally:
        # A client that went away surfaces here as GeneratorExit at the last yield.
        if job is not None:
            job.cancel()


def _await_model(spec: ModelSpec, ping: float) -> Iterator[bytes]:
    while True:
        try:
            return models.cache.get(spec, timeout=ping)
        except TimeoutError:
            yield sse.format_comment("ping")


def _submit(
    lm: LoadedModel, body: GenerateRequest, settings: Settings
) -> tuple[GenerationJob, str]:
    """Check the request against the model, queue its job; return it with the prompt text."""
    if body.max_new_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"max_new_tokens must be at most {settings.max_new_tokens} (LLMVIZ_MAX_NEW_TOKENS)"
        )
    prompt, prompt_ids = run_off_hub(inputs.encode, lm, body)
    limit = lm.context_length
    if limit is not None and len(prompt_ids) + body.max_new_tokens > limit:
        raise BadRequest(
            f"the prompt has {len(prompt_ids)} tokens and max_new_tokens is {body.max_new_tokens}, "
            f"but the model's context length is {limit}"
        )
    fields = body.model_dump(include=set(SamplingParams.__dataclass_fields__))
    params = SamplingParams(**fields, logprobs=body.details)
    watch = _attention_watch(lm, body)
    job = GenerationJob(prompt_ids, params, tuple(body.stop), watch)
    models.submit(lm, job)
    return job, prompt


def account(record: dict[str, Any], model: str, done: DoneEvent, prompt: str, text: str) -> None:
    """Put a finished generation into the request log and the metrics."""
    record.update(
        model=model,
        prompt_tokens=done.prompt_tokens,
        generated_tokens=done.generated_tokens,
        finish_reason=done.finish_reason,
        ttft_ms=done.timing.get("ttft_ms"),
        queue_ms=done.timing.get("queue_ms"),
        prompt=prompt,
        output=text,
    )
    metrics.observe_generation(model, done.timing, done.prompt_tokens, done.generated_tokens)


def _attention_watch(lm: LoadedModel, body: GenerateRequest) -> AttentionWatch | None:
    if body.attention is None:
        return None
    shape = lm.shape()
    layers = inputs.check_indices(body.layers, shape["n_layers"], "layer")
    heads = None
    if body.heads != "all":
        heads = tuple(inputs.check_indices(body.heads, shape["n_heads"], "head"))
    return AttentionWatch(tuple(layers), heads)
