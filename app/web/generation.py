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
from app.models import ModelProfile, ModelSpec, prompts
from app.ops import metrics
from app.web import parsing, requestlog, sse
from app.web.answers import GenerateResponse
from app.web.bodies import GenerateRequest
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.shaping import Transcript, follow, reply
from app.web.streams import StreamFramer

log = logging.getLogger(__name__)
bp = Blueprint("generation", __name__)


@bp.post("/generate")
@documented(GenerateRequest, GenerateResponse)
def generate():
    """Generate a continuation and answer with the whole text at once."""
    body = parsing.read_body(GenerateRequest)
    settings = parsing.settings()
    lm = models.cache.get(parsing.model_spec(body.model_id))
    job, prompt = _prepare(lm.profile, body, settings)
    models.submit(lm, job)
    record = requestlog.record()
    transcript = Transcript(prompt)
    # A client that leaves stops the work here too, not only on a stream.
    for event in follow(job, settings.sse_ping_seconds, disconnect_probe(request.environ)):
        transcript.add(event)
    _account(record, lm.model_id, job, transcript)
    transcript.raise_for_failure()
    return reply(transcript.answer(body.return_full_text, body.details))


@bp.post("/generate/stream")
@documented(GenerateRequest, sse.MIMETYPE)
def generate_stream():
    """Generate a continuation as Server-Sent Events, one event per piece of text."""
    body = parsing.read_body(GenerateRequest)
    settings = parsing.settings()
    spec = parsing.model_spec(body.model_id)
    lm = models.cache.peek(spec)
    if lm is not None:
        job, prompt = _prepare(lm.profile, body, settings)
        models.submit(lm, job)
    else:
        # Tokenizer and config load in moments: every bad request is still a plain JSON
        # answer. The weights then load while the headers go out and pings keep it open.
        profile = run_off_hub(models.load_profile, spec)
        job, prompt = _prepare(profile, body, settings)
        models.cache.begin(spec, profile)
    stream = _stream(
        spec,
        job,
        prompt,
        lm is None,
        StreamFramer(body.details, settings.stream_compat),
        _echoes_prompt(body, settings),
        settings.sse_ping_seconds,
        disconnect_probe(request.environ),
        requestlog.record(),
    )
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _stream(
    spec: ModelSpec,
    job: GenerationJob,
    prompt: str,
    cold: bool,
    framer: StreamFramer,
    echo: bool,
    ping: float,
    client_gone: Callable[[], bool],
    record: dict[str, Any],
) -> Iterator[bytes]:
    # Values are passed in: the request context is gone by the time this runs.
    try:
        yield b""  # the headers go out now, before the prompt is processed
        if cold:
            lm = yield from _await_model(spec, ping)
            models.submit(lm, job)
        if echo:
            yield from framer.prompt(prompt)
        transcript = Transcript(prompt)
        for event in follow(job, ping, client_gone):
            transcript.add(event)
            if isinstance(event, DoneEvent):
                _account(record, spec.model_id, job, transcript)
            yield from framer.frame(event)
        if transcript.done is None and transcript.error is None:
            _account(record, spec.model_id, job, transcript)  # the client left
    except Exception as exc:
        yield from framer.fail(_stream_error(exc))
    finally:
        job.cancel()  # `follow` does too; this covers a client gone before it started


def _echoes_prompt(body: GenerateRequest, settings: Settings) -> bool:
    # Plain streams for whitespace-trimming clients leave the prompt out unless asked for it.
    compat = settings.stream_compat and not body.details
    if compat and "return_full_text" not in body.model_fields_set:
        return False
    return body.return_full_text


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


def _prepare(
    profile: ModelProfile, body: GenerateRequest, settings: Settings
) -> tuple[GenerationJob, str]:
    """Check the request against the model; return its job (not yet queued) and prompt text."""
    if body.max_new_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"max_new_tokens must be at most {settings.max_new_tokens} (LLMVIZ_MAX_NEW_TOKENS)"
        )
    prompt, prompt_ids = run_off_hub(prompts.encode, profile, parsing.prompt_input(body))
    profile.check_context(len(prompt_ids), body.max_new_tokens)
    fields = body.model_dump(include=set(SamplingParams.__dataclass_fields__))
    params = SamplingParams(**fields, logprobs=body.details)
    watch = None
    if body.attention is not None:
        watch = parsing.head_selection(profile, body.layers, body.heads)
    return GenerationJob(prompt_ids, params, tuple(body.stop), watch), prompt


def _account(
    record: dict[str, Any], model: str, job: GenerationJob, transcript: Transcript
) -> None:
    """Put a generation, finished, failed or left by its client, into the log and metrics."""
    done, failed = transcript.done, transcript.error is not None
    record.update(
        model=model,
        prompt_tokens=len(job.prompt_ids),
        generated_tokens=len(transcript.tokens),
        finish_reason=done.finish_reason if done else "error" if failed else "disconnected",
        prompt=transcript.prompt,
        output=transcript.text,
    )
    if done is not None:
        record.update(ttft_ms=done.timing.get("ttft_ms"), queue_ms=done.timing.get("queue_ms"))
        metrics.observe_generation(model, done.timing, done.prompt_tokens, done.generated_tokens)
