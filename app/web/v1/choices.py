"""Running an OpenAI request's choices: `n` per prompt, each one `GenerationJob`, all queued at
once so that the engine batches them as rows of the same forward passes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from app import models
from app.engine import DoneEvent, ErrorEvent, GenerationJob, SamplingParams
from app.engine.threads import Mailbox, run_off_hub, spawn
from app.errors import BadRequest
from app.models import LoadedModel, PromptInput, Tokens, prompts
from app.ops import metrics
from app.web.shaping import Transcript, follow


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text (for token ids, their decoded text) and the ids the model reads.

    `tokens` (each token's text and character span) is there for completions, which
    can echo the prompt; a chat's rendered template has none.
    """

    index: int
    text: str
    ids: list[int]
    tokens: Tokens | None = None


@dataclass
class Choice:
    """One choice: its prompt, its job (None when nothing is to be generated) and its fold."""

    index: int
    prompt: Prompt
    job: GenerationJob | None
    transcript: Transcript = field(init=False)

    def __post_init__(self) -> None:
        self.transcript = Transcript(self.prompt.text)

    @property
    def finish_reason(self) -> str:
        """OpenAI's reason: "length" (the token limit) or "stop" (end of text, a stop string)."""
        done = self.transcript.done
        return "length" if done is None or done.finish_reason == "length" else "stop"


def tokenize(lm: LoadedModel, given: str | list[int], index: int) -> Prompt:
    """A prompt's tokens; an empty text starts from the model's BOS token, as /generate does."""
    as_input = PromptInput(prompt=given) if isinstance(given, str) else PromptInput(token_ids=given)
    try:
        tokens = run_off_hub(prompts.tokenize, lm, as_input)
    except BadRequest as exc:  # a token id outside the vocabulary, a text it cannot encode
        raise BadRequest(exc.message, param="prompt") from None
    if not tokens.ids:
        bos = lm.tokenizer.bos_token_id
        if bos is None:
            raise BadRequest(
                "the prompt is empty and this model has no beginning-of-sequence token",
                param="prompt",
            )
        tokens = run_off_hub(prompts.tokenize, lm, PromptInput(token_ids=[bos]))
    return Prompt(index, tokens.prompt, tokens.ids, tokens)


def plan(
    prompt_list: list[Prompt], n: int, params: SamplingParams, stop: tuple[str, ...]
) -> list[Choice]:
    """`n` choices per prompt, in OpenAI's order; choice i of a seeded request uses seed + i."""
    choices = []
    for prompt in prompt_list:
        for _ in range(n):
            index = len(choices)
            job = None
            if params.max_new_tokens > 0:
                seed = None if params.seed is None else (params.seed + index) % 2**64
                job = GenerationJob(prompt.ids, replace(params, seed=seed), stop)
            choices.append(Choice(index, prompt, job))
    return choices


def submit(lm: LoadedModel, choices: list[Choice]) -> None:
    """Queue every choice's job; if one cannot be queued (a full queue), cancel them all."""
    queued = []
    try:
        for choice in choices:
            if choice.job is not None:
                models.submit(lm, choice.job)
                queued.append(choice.job)
    except BaseException:
        for job in queued:
            job.cancel()
        raise


def finish(choices: list[Choice], ping: float, client_gone: Callable[[], bool]) -> None:
    """Read every choice's events to its end (the jobs run together; order does not matter)."""
    try:
        for choice in choices:
            if choice.job is not None:
                for event in follow(choice.job, ping, client_gone):
                    choice.transcript.add(event)
                choice.transcript.raise_for_failure()
    finally:
        cancel(choices)


def interleave(choices: list[Choice], ping: float) -> Iterator[tuple[Choice, Any] | None]:
    """Every choice's events as they come, as (choice, event); None after `ping` s of silence.

    Each job is read by its own greenlet (a thread under `flask run`) into one mailbox.
    The caller cancels the jobs when it stops early (`cancel`); their readers then end.
    """
    inbox = Mailbox()
    running = [choice for choice in choices if choice.job is not None]

    def pump(choice: Choice) -> None:
        for event in choice.job.events(ping):
            if event is not None:
                inbox.put((choice, event))

    for choice in running:
        spawn(pump, choice)
    left = len(running)
    while left:
        try:
            choice, event = inbox.get(ping)
        except TimeoutError:
            yield None
            continue
        choice.transcript.add(event)
        if isinstance(event, DoneEvent | ErrorEvent):
            left -= 1
        yield choice, event


def cancel(choices: list[Choice]) -> None:
    """Stop every choice's job (a no-op for those that have ended)."""
    for choice in choices:
        if choice.job is not None:
            choice.job.cancel()


def account(record: dict[str, Any], model: str, choices: list[Choice], user: str | None) -> None:
    """Put the request into the log record, and each finished generation into the metrics."""
    prompts_seen = {choice.prompt.index: len(choice.prompt.ids) for choice in choices}
    generated = sum(len(choice.transcript.tokens) for choice in choices)
    record.update(
        model=model,
        prompt_tokens=sum(prompts_seen.values()),
        generated_tokens=generated,
        choices=len(choices),
        finish_reason=",".join(sorted({_logged_reason(choice) for choice in choices})),
    )
    if user is not None:
        record["user"] = user
    for choice in choices:
        done = choice.transcript.done
        if done is not None and choice.job is not None:
            metrics.observe_generation(
                model, done.timing, done.prompt_tokens, done.generated_tokens
            )


def usage(choices: list[Choice]) -> dict[str, int]:
    """OpenAI's usage: each prompt counted once, every generated token of every choice."""
    prompt_tokens = sum({c.prompt.index: len(c.prompt.ids) for c in choices}.values())
    completion = sum(len(choice.transcript.tokens) for choice in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _logged_reason(choice: Choice) -> str:
    transcript = choice.transcript
    if transcript.error is not None:
        return "error"
    if choice.job is None:
        return "length"
    return transcript.done.finish_reason if transcript.done else "disconnected"
