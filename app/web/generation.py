"""The generation blueprint: POST /generate and POST /generate/stream.

Both endpoints queue the same `GenerationJob` and read its events through
`shaping.follow`; /generate folds them into one answer, /generate/stream
frames each one as Server-Sent Events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, request

from app import models
from app.config import Settings
from app.engine import DoneEvent, GenerationJob, SamplingParams
from app.engine.threads import run_off_hub
from app.errors import APIError, BadRequest, GenerationFailed, translate
from app.models import LoadedModel, ModelSpec, prompts
from app.ops import metrics
from app.web import parsing, requestlog, sse
from app.web.answers import GenerateResponse
from app.web.bodies import GenerateRequest
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.shaping import Transcript, error_event, follow, reply, stream_event

log = logging.getLogger(__name__)
bp = Blueprint("generation", __name__)


@bp.post("/generate")
@documented(GenerateRequest, GenerateResponse)
def generate():
    """Generate a continuation and answer with the whole text at once."""
    body = parsing.read_body(GenerateRequest)
    settings = parsing.settings()
    lm = models.cache.get(parsing.model_spec(body.model_id))
    job, prompt = _submit(lm, body, settings)
    transcript = Transcript(prompt)
    for event in follow(job, settings.sse_ping_seconds):
        transcript.add(event)
    if transcript.done is not None:
        account(requestlog.record(), lm.model_id, transcript)
    transcript.raise_for_failure()
    return reply(transcript.answer(body.return_full_text, body.details))


@bp.post("/generate/stream")
@documented(GenerateRequest, sse.MIMETYPE)
def generate_stream():
    """Generate a continuation as Server-Sent Events, one event per piece of text."""
    body = parsing.read_body(GenerateRequest)
    settings = parsing.settings()
    spec = parsing.model_spec(body.model_id)
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
        transcript = Transcript(prompt)
        for event in follow(job, ping, client_gone):
            transcript.add(event)
            if isinstance(event, DoneEvent):
                account(record, spec.model_id, transcript)
            yield from stream_event(event, body.details)
        if transcript.done is None and transcript.error is None:
            record["finish_reason"] = "disconnected"
    except Exception as exc:
        yield error_event(_stream_error(exc))
    finally:
        # `follow` cancels the job too; this covers a client gone before it started.
        if job is not None:
            job.cancel()


def _stream_error(exc: Exception) -> APIError:
    translated = translate(exc)
    if translated is None:
        log.exception("stream failed", exc_info=exc)
        return GenerationFailed("internal server error")
    return translated


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
    prompt, prompt_ids = run_off_hub(prompts.encode, lm, parsing.prompt_input(body))
    limit = lm.context_length
    if limit is not None and len(prompt_ids) + body.max_new_tokens > limit:
        raise BadRequest(
            f"the prompt has {len(prompt_ids)} tokens and max_new_tokens is {body.max_new_tokens}, "
            f"but the model's context length is {limit}"
        )
    fields = body.model_dump(include=set(SamplingParams.__dataclass_fields__))
    params = SamplingParams(**fields, logprobs=body.details)
    watch = None
    if body.attention is not None:
        watch = parsing.head_selection(lm, body.layers, body.heads)
    job = GenerationJob(prompt_ids, params, tuple(body.stop), watch)
    models.submit(lm, job)
    return job, prompt


def account(record: dict[str, Any], model: str, transcript: Transcript) -> None:
    """Put a finished generation into the request log and the metrics."""
    done = transcript.done
    record.update(
        model=model,
        prompt_tokens=done.prompt_tokens,
        generated_tokens=done.generated_tokens,
        finish_reason=done.finish_reason,
        ttft_ms=done.timing.get("ttft_ms"),
        queue_ms=done.timing.get("queue_ms"),
        prompt=transcript.prompt,
        output=transcript.text,
    )
    metrics.observe_generation(model, done.timing, done.prompt_tokens, done.generated_tokens)
