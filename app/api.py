"""The HTTP API blueprint: validate, get the model, run the engine, shape the answer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest as WerkzeugBadRequest
from werkzeug.exceptions import RequestEntityTooLarge

from app import models, responses, sse
from app.concurrency import run_off_hub
from app.config import Settings
from app.connection import disconnect_probe
from app.decoding import char_spans, token_pieces
from app.engine import WorkerClosed
from app.errors import APIError, BadRequest, GenerationFailed, Overloaded, PayloadTooLarge
from app.jobs import DoneEvent, ErrorEvent, GenerationJob, TokenEvent
from app.models import LoadedModel, ModelSpec
from app.sampling import SamplingParams
from app.schemas import DetokenizeRequest, GenerateRequest, TokenizeRequest, parse_body

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


@bp.get("/health")
def health():
    """Liveness: answers at once, whatever the models are doing."""
    return jsonify(ok=True)


@bp.post("/tokenize")
def tokenize():
    """Split a prompt into token ids, the text each token adds, and where it sits."""
    body = _read_body(TokenizeRequest)
    lm = models.cache.get(_spec(body.model_id))
    return jsonify(run_off_hub(_tokenize, lm, body))


@bp.post("/detokenize")
def detokenize():
    """Turn token ids back into text."""
    body = _read_body(DetokenizeRequest)
    lm = models.cache.get(_spec(body.model_id))
    vocab = len(lm.tokenizer)
    if bad := [i for i in body.token_ids if not 0 <= i < vocab]:
        raise BadRequest(f"token id {bad[0]} is outside this model's vocabulary (0 to {vocab - 1})")
    text = lm.tokenizer.decode(
        body.token_ids,
        skip_special_tokens=body.skip_special_tokens,
        clean_up_tokenization_spaces=False,
    )
    return jsonify(text=text)


@bp.post("/generate")
def generate():
    """Generate a continuation and answer with the whole text at once."""
    body = _read_body(GenerateRequest)
    settings = _settings()
    job, prompt = _submit(models.cache.get(_spec(body.model_id)), body, settings)
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
    answer: dict[str, Any] = {"text": prompt + text if body.return_full_text else text}
    if body.details:
        answer["details"] = responses.details(done, tokens)
    return jsonify(answer)


@bp.post("/generate/stream")
def generate_stream():
    """Generate a continuation as Server-Sent Events, one event per piece of text."""
    body = _read_body(GenerateRequest)
    settings = _settings()
    spec = _spec(body.model_id)
    prepared = None
    if (lm := models.cache.peek(spec)) is not None:
        prepared = _submit(lm, body, settings)  # every error is still a plain JSON answer here
    else:
        run_off_hub(models.check_available, spec)  # an unknown model is a 404, not an event
        models.cache.begin(spec)  # load while the headers go out
    stream = _stream(spec, body, prepared, settings, disconnect_probe(request.environ))
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
    prepared: tuple[GenerationJob, str] | None,
    settings: Settings,
    client_gone: Callable[[], bool],
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
        for event in job.events(ping):
            if client_gone():
                return  # `finally` cancels the job
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
    prompt, prompt_ids = run_off_hub(_encode, lm, body)
    limit = lm.context_length
    if limit is not None and len(prompt_ids) + body.max_new_tokens > limit:
        raise BadRequest(
            f"the prompt has {len(prompt_ids)} tokens and max_new_tokens is {body.max_new_tokens}, "
            f"but the model's context length is {limit}"
        )
    fields = body.model_dump(include=set(SamplingParams.__dataclass_fields__))
    params = SamplingParams(**fields, logprobs=body.details)
    job = GenerationJob(prompt_ids, params, tuple(body.stop))
    for _ in range(3):
        try:
            lm.worker.submit(job)
            return job, prompt
        except WorkerClosed:  # evicted between lookup and submit: load it again
            lm = models.cache.get(lm.spec)
    raise Overloaded("the model is being reloaded; retry shortly")


def _render(lm: LoadedModel, body: TokenizeRequest | GenerateRequest) -> tuple[str, bool | None]:
    """The prompt text, and whether to add special tokens (None: the tokenizer's default)."""
    if body.messages is None:
        return body.prompt, getattr(body, "add_special_tokens", None)
    if not lm.tokenizer.chat_template:
        raise BadRequest(
            f"model {lm.spec.model_id!r} has no chat template: send `prompt` instead of `messages`"
        )
    chat = [message.model_dump() for message in body.messages]
    try:
        text = lm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises for conversations the template refuses
        raise BadRequest(f"the chat template refused these messages: {exc}") from None
    # A rendered template already holds its special tokens (BOS and the like).
    return text, False


def _encode(lm: LoadedModel, body: GenerateRequest) -> tuple[str, list[int]]:
    prompt, add_special = _render(lm, body)
    ids = lm.tokenizer(prompt, add_special_tokens=add_special is not False)["input_ids"]
    if ids:
        return prompt, ids
    # An empty prompt: start from the beginning-of-sequence token where there is one.
    if lm.tokenizer.bos_token_id is None:
        raise BadRequest("the prompt is empty and this model has no beginning-of-sequence token")
    return prompt, [lm.tokenizer.bos_token_id]


def _tokenize(lm: LoadedModel, body: TokenizeRequest) -> dict[str, Any]:
    tokenizer = lm.tokenizer
    prompt, add_special = _render(lm, body)
    options = {} if add_special is None else {"add_special_tokens": add_special}
    encoding = tokenizer(prompt, return_offsets_mapping=tokenizer.is_fast, **options)
    ids = encoding["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    special_ids = set(tokenizer.all_special_ids)
    special = [token_id in special_ids for token_id in ids]
    return {
        "token_ids": ids,
        "tokens": pieces,
        "count": len(ids),
        "offsets": char_spans(prompt, pieces, special, encoding.get("offset_mapping")),
        "special": special,
        "prompt": prompt if body.messages is not None else None,
    }


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
