"""The generation blueprint: POST /generate and POST /generate/stream.

Both endpoints serve a run of one choice through `serving.loop`: /generate folds it
into one answer, /generate/stream frames its events as Server-Sent Events.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from app import models
from app.config import Settings
from app.engine import GenerationJob, SamplingParams
from app.engine.threads import run_off_hub
from app.models import ModelProfile, prompts
from app.web import interventions, parsing, remote, requestlog, sse
from app.web.answers import GenerateResponse
from app.web.bodies import GenerateRequest
from app.web.disconnect import disconnect_probe
from app.web.docs import documented
from app.web.large import reply_off_hub
from app.web.serving import loop
from app.web.serving.run import Choice, Prompt, Run
from app.web.shaping import generate_answer
from app.web.streams import StreamFramer

bp = Blueprint("generation", __name__)


@bp.post("/generate")
@documented(GenerateRequest, GenerateResponse)
def generate():
    """Generate a continuation and answer with the whole text at once."""
    body = parsing.read_body(GenerateRequest)
    settings = parsing.settings()
    far = parsing.remote_model(body.model_id)
    if far is not None:
        run = remote.run_of(far, body, settings)
    else:
        lm = models.cache.get(parsing.model_spec(body.model_id))
        run = _run(lm.profile, body, settings)
        run.submit(lm)
    # A client that leaves stops the work here too, not only on a stream.
    loop.fold(run, settings.sse_ping_seconds, disconnect_probe(request.environ))
    # `details` holds every token, its alternatives and attention rows: shaped off the hub.
    return reply_off_hub(
        lambda: generate_answer(run.choices[0], body.return_full_text, body.details).model_dump(
            mode="json", exclude_unset=True
        )
    )


@bp.post("/generate/stream")
@documented(GenerateRequest, sse.MIMETYPE)
def generate_stream():
    """Generate a continuation as Server-Sent Events, one event per piece of text."""
    body = parsing.read_body(GenerateRequest)
    settings = parsing.settings()
    far = parsing.remote_model(body.model_id)
    spec = None if far is not None else parsing.model_spec(body.model_id)
    lm = None if spec is None else models.cache.peek(spec)
    if far is not None:
        run = remote.run_of(far, body, settings)
    elif lm is not None:
        run = _run(lm.profile, body, settings)
        run.submit(lm)
    else:
        assert spec is not None
        # Tokenizer and config load in moments: every bad request is still a plain JSON
        # answer. The weights then load while the headers go out and pings keep it open.
        profile = run_off_hub(models.load_profile, spec)
        run = _run(profile, body, settings)
        models.cache.begin(spec, profile)
    stream = loop.stream(
        run,
        StreamFramer(body.details, settings.stream_compat, _echoes_prompt(body, settings)),
        settings.sse_ping_seconds,
        disconnect_probe(request.environ),
        cold=None if lm is not None or far is not None else spec,
        progress_pings=not settings.stream_compat,  # the fork's parser shows comments as text
    )
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _echoes_prompt(body: GenerateRequest, settings: Settings) -> bool:
    # Plain streams for whitespace-trimming clients leave the prompt out unless asked for it.
    compat = settings.stream_compat and not body.details
    if compat and "return_full_text" not in body.model_fields_set:
        return False
    return body.return_full_text


def _run(profile: ModelProfile, body: GenerateRequest, settings: Settings) -> Run:
    """Check the request against the model; return its run of one choice, not yet queued."""
    loop.check_limit(body.max_new_tokens, settings, "max_new_tokens")
    text, ids = run_off_hub(prompts.encode, profile, parsing.prompt_input(body))
    loop.check_context(profile, len(ids), body.max_new_tokens, "max_new_tokens")
    fields = body.model_dump(include=set(SamplingParams.__dataclass_fields__))
    params = SamplingParams(**fields, logprobs=body.details)
    watch = None
    if body.attention is not None:
        watch = parsing.head_selection(profile, body.layers, body.heads)
    intervened = interventions.resolve(profile, body.interventions, len(ids))
    job = GenerationJob(ids, params, tuple(body.stop), watch, intervened)
    return Run(profile.model_id, [Choice(0, Prompt(0, text, ids), job)], requestlog.record())
