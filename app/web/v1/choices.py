"""An OpenAI request as a run's choices: its prompts tokenized, the engine's sampling
parameters, and `n` choices per prompt, each one `GenerationJob` (see `serving.run`,
which queues them at once, so that the engine batches them as rows of the same passes)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.config import Settings
from app.engine import GenerationJob, SamplingParams
from app.engine.interventions import InterventionSet
from app.engine.threads import run_off_hub
from app.errors import BadRequest
from app.models import ModelProfile, PromptInput, prompts
from app.web import interventions
from app.web.serving.run import Choice, Prompt
from app.web.v1.bodies import logit_bias


def tokenize(profile: ModelProfile, given: str | list[int], index: int) -> Prompt:
    """A prompt's tokens; an empty text starts from the model's BOS token, as /generate does."""
    as_input = PromptInput(prompt=given) if isinstance(given, str) else PromptInput(token_ids=given)
    try:
        tokens = run_off_hub(prompts.tokenize, profile, as_input)
    except BadRequest as exc:  # a token id outside the vocabulary, a text it cannot encode
        raise BadRequest(exc.message, param="prompt") from None
    if not tokens.ids:
        bos = profile.tokenizer.bos_token_id
        if bos is None:
            raise BadRequest(
                "the prompt is empty and this model has no beginning-of-sequence token",
                param="prompt",
            )
        tokens = run_off_hub(prompts.tokenize, profile, PromptInput(token_ids=[bos]))
    return Prompt(index, tokens.prompt, tokens.ids, tokens)


def plan(
    prompt_list: list[Prompt],
    n: int,
    params: SamplingParams,
    stop: tuple[str, ...],
    intervened: dict[int, InterventionSet] | None = None,
) -> list[Choice]:
    """`n` choices per prompt, in OpenAI's order; choice i of a seeded request uses seed + i.
    `intervened`: each prompt's interventions, by prompt index."""
    choices: list[Choice] = []
    for prompt in prompt_list:
        for _ in range(n):
            index = len(choices)
            job = None
            if params.max_new_tokens > 0:
                seed = None if params.seed is None else (params.seed + index) % 2**64
                changes = (intervened or {}).get(prompt.index)
                job = GenerationJob(
                    prompt.ids, replace(params, seed=seed), stop, interventions=changes
                )
            choices.append(Choice(index, prompt, job))
    return choices


def sampling(profile: ModelProfile, body: Any, max_tokens: int, top: int | None) -> SamplingParams:
    """The engine's parameters for a completion or chat body; OpenAI's defaults:
    temperature 1 and top_p 1. `top`: alternatives per token (None: no logprobs)."""
    bias = logit_bias(body)
    if bias:
        try:
            prompts.check_token_ids(profile, [token_id for token_id, _ in bias])
        except BadRequest as exc:
            raise BadRequest(f"logit_bias: {exc.message}", param="logit_bias") from None
    top_p = 1.0 if body.top_p is None else body.top_p
    top_k = body.top_k or 0
    if top_p == 0:  # nothing but the likeliest token
        top_p, top_k = 1.0, 1
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
        seed=body.seed,
        ignore_eos=bool(body.ignore_eos),
        logprobs=top is not None,
        top_logprobs=top or 0,
    )


def check_queue(planned: list[Choice], settings: Settings) -> None:
    """Refuse (400, naming `n`) more jobs than the queue holds: they could never be queued
    at once, so retrying would not help."""
    if sum(choice.job is not None for choice in planned) > settings.max_queue:
        raise BadRequest(
            f"this request asks for {len(planned)} generations (prompts times n); at most "
            f"{settings.max_queue} fit in the queue (LLMVIZ_MAX_QUEUE)",
            param="n",
        )


def room(profile: ModelProfile, prompt_tokens: int, settings: Settings) -> int:
    """A chat's default token limit: the rest of the context, up to LLMVIZ_MAX_NEW_TOKENS."""
    limit = profile.context_length
    room = (
        settings.max_new_tokens
        if limit is None
        else min(settings.max_new_tokens, limit - prompt_tokens)
    )
    if room < 1:
        raise BadRequest(
            f"the messages fill the model's context ({limit} tokens): no room to answer",
            param="messages",
        )
    return room


def interventions_of(
    profile: ModelProfile, body: Any, prompt_list: list[Prompt]
) -> dict[int, InterventionSet]:
    """Each prompt's interventions (`interventions`, checked against that prompt)."""
    if not body.interventions:
        return {}
    sets = {}
    for prompt in prompt_list:
        found = interventions.resolve(profile, body.interventions, len(prompt.ids))
        if found is not None:
            sets[prompt.index] = found
    return sets
