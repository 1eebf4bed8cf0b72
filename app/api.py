"""The HTTP API blueprint: validate, get the model, run the engine, shape the answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest as WerkzeugBadRequest
from werkzeug.exceptions import RequestEntityTooLarge

from app import models, sse
from app.concurrency import run_off_hub
from app.config import Settings
from app.connection import disconnect_probe
from app.decoding import token_pieces
from app.engine import DoneEvent, ErrorEvent, GenerationJob, TokenEvent, WorkerClosed
from app.errors import APIError, BadRequest, Overloaded, PayloadTooLarge
from app.models import LoadedModel, ModelSpec
from app.sampling import SamplingParams
from app.schemas import GenerateRequest, TokenizeRequest, parse_body

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


class GenerationFailed(APIError):
    status, code = 500, "generation_failed"


@bp.get("/health")
def health():
    """Liveness: answers at once, whatever the models are doing."""
    return jsonify(ok=True)


@bp.post("/tokenize")
def tokenize():
    """Split a prompt into token ids and the text each token adds."""
    body = _read_body(TokenizeRequest)
    lm = models.cache.get(_spec(body.model_id))
    ids, pieces = run_off_hub(_tokenize, lm.tokenizer, body.prompt)
    return jsonify(token_ids=ids, tokens=pieces, count=len(ids))


@bp.post("/generate")
def generate():
    """Generate a continuation and answer with the whole text at once."""
    body = _read_body(GenerateRequest)
    settings = _settings()
    job = _submit(models.cache.get(_spec(body.model_id)), body, settings)
    pieces = []
    try:
        for event in job.events(settings.sse_ping_seconds):
            if isinstance(event, TokenEvent | DoneEvent):
                pieces.append(event.text)
            elif isinstance(event, ErrorEvent):
                raise GenerationFailed(event.message)
    finally:
        job.cancel()  # a no-op when finished; stops the worker if this handler dies early
    text = "".join(pieces)
    return jsonify(text=body.prompt + text if body.return_full_text else text)


@bp.post("/generate/stream")
def generate_stream():
    """Generate a continuation as Server-Sent Events, one event per piece of text."""
    body = _read_body(GenerateRequest)
    settings = _settings()
    spec = _spec(body.model_id)
    job = None
    if (lm := models.cache.peek(spec)) is not None:
        job = _submit(lm, body, settings)  # every error is still a plain JSON answer here
    else:
        run_off_hub(models.check_available, spec)  # an unknown model is a 404, not an event
        models.cache.begin(spec)  # load while the headers go out
    stream = _stream(spec, body, job, settings, disconnect_probe(request.environ))
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


@bp.get("/models")
def list_models():
    """Models in memory (with their engine counters) and folders that can be loaded."""
    settings = _settings()
    return jsonify(
        loaded=[lm.describe() for lm in models.cache.loaded()],
        available=models.list_local(settings.model_root),
        default_model=settings.default_model,
    )


def _stream(
    spec: ModelSpec,
    body: GenerateRequest,
    job: GenerationJob | None,
    settings: Settings,
    client_gone: Callable[[], bool],
) -> Iterator[bytes]:
    # Values are passed in: the request context is gone by the time this runs.
    ping = settings.sse_ping_seconds
    try:
        yield sse.format_event(body.prompt) if body.return_full_text else b""  # headers now
        if job is None:
            lm = yield from _await_model(spec, ping)
            job = _submit(lm, body, settings)
        for event in job.events(ping):
            if client_gone():
                return  # `finally` cancels the job
            if event is None:
                yield sse.format_comment("ping")
            elif isinstance(event, ErrorEvent):
                yield _error_event(GenerationFailed(event.message))
            elif event.text:
                yield sse.format_event(event.text)
    except APIError as exc:
        yield _error_event(exc)
    except Exception:
        log.exception("stream failed")
        yield _error_event(GenerationFailed("internal server error"))
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


def _error_event(exc: APIError) -> bytes:
    return sse.format_event(json.dumps(exc.to_dict()), event="error")


def _submit(lm: LoadedModel, body: GenerateRequest, settings: Settings) -> GenerationJob:
    if body.max_new_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"max_new_tokens must be at most {settings.max_new_tokens} (LLMVIZ_MAX_NEW_TOKENS)"
        )
    prompt_ids = run_off_hub(_encode, lm, body.prompt)
    limit = lm.context_length
    if limit is not None and len(prompt_ids) + body.max_new_tokens > limit:
        raise BadRequest(
            f"the prompt has {len(prompt_ids)} tokens and max_new_tokens is {body.max_new_tokens}, "
            f"but the model's context length is {limit}"
        )
    params = SamplingParams(**body.model_dump(include=set(SamplingParams.__dataclass_fields__)))
    job = GenerationJob(prompt_ids, params)
    for _ in range(3):
        try:
            lm.worker.submit(job)
            return job
        except WorkerClosed:  # evicted between lookup and submit: load it again
            lm = models.cache.get(lm.spec)
    raise Overloaded("the model is being reloaded; retry shortly")


def _encode(lm: LoadedModel, prompt: str) -> list[int]:
    ids = lm.tokenizer(prompt)["input_ids"]
    if ids:
        return ids
    # An empty prompt: start from the beginning-of-sequence token where there is one.
    if lm.tokenizer.bos_token_id is None:
        raise BadRequest("the prompt is empty and this model has no beginning-of-sequence token")
    return [lm.tokenizer.bos_token_id]


def _tokenize(tokenizer: Any, prompt: str) -> tuple[list[int], list[str]]:
    ids = tokenizer(prompt)["input_ids"]
    return ids, token_pieces(tokenizer, ids)


def _spec(model_id: str | None) -> ModelSpec:
    settings = _settings()
    return models.resolve(model_id or settings.default_model, settings)


def _read_body(schema: type) -> Any:
    try:
        # force: browsers may send JSON as text/plain to avoid a CORS preflight.
        payload = request.get_json(force=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is larger than {_settings().max_body_bytes} bytes "
            "(LLMVIZ_MAX_BODY_BYTES)"
        ) from None
    except WerkzeugBadRequest:
        raise BadRequest("request body is not valid JSON") from None
    return parse_body(schema, payload)


def _settings() -> Settings:
    return current_app.config["LLMVIZ"]
