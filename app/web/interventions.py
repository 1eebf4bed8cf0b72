"""A request's `interventions`, checked against its model and made ready for the engine.

Every check happens here, before any work starts: a layer or head the model does not have,
a steering vector of the wrong width, a contrast text or patch source longer than the
model's context, a patch position past the prompt or the source, each a 400 naming the
field (`interventions.1.head`). Contrast texts and patch sources are
tokenized here as a prompt is; the engine computes their residual streams on the model's
thread (app/engine/interventions.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from app.engine.interventions import Intervention, InterventionSet
from app.engine.threads import run_off_hub
from app.errors import BadRequest
from app.models import ModelProfile, PromptInput, prompts
from app.web.bodies import AblateHead, InterventionBody, Patch, Steer


def resolve(
    profile: ModelProfile, given: Sequence[InterventionBody], prompt_tokens: int
) -> InterventionSet | None:
    """The request's interventions for the engine (None for none).

    Raises BadRequest naming the field at fault.
    """
    if not given:
        return None
    return InterventionSet([_one(profile, body, i, prompt_tokens) for i, body in enumerate(given)])


def _one(
    profile: ModelProfile, body: InterventionBody, index: int, prompt_tokens: int
) -> Intervention:
    where = f"interventions.{index}"
    if body.layer >= profile.n_layers:
        _refuse(
            f"{where}.layer",
            f"layer {body.layer} does not exist: {profile.model_id} has "
            f"{profile.n_layers} layers (0 to {profile.n_layers - 1})",
        )
    if isinstance(body, AblateHead):
        if body.head >= profile.n_heads:
            _refuse(
                f"{where}.head",
                f"head {body.head} does not exist: {profile.model_id} has "
                f"{profile.n_heads} query heads a layer (0 to {profile.n_heads - 1})",
            )
        return Intervention("ablate_head", body.layer, head=body.head)
    if isinstance(body, Steer):
        if body.vector is not None:
            if profile.d_model is not None and len(body.vector) != profile.d_model:
                _refuse(
                    f"{where}.vector",
                    f"the vector has {len(body.vector)} numbers; the "
                    f"residual stream of {profile.model_id} is {profile.d_model} wide",
                )
            return Intervention("steer", body.layer, vector=tuple(body.vector), scale=body.scale)
        assert body.contrast is not None
        texts = [
            _ids(profile, text, f"{where}.contrast.{i}") for i, text in enumerate(body.contrast)
        ]
        return Intervention("steer", body.layer, contrast=(texts[0], texts[1]), scale=body.scale)
    if isinstance(body, Patch):
        source = _ids(profile, body.source, f"{where}.source")
        for i, position in enumerate(body.positions):
            if position >= prompt_tokens or position >= len(source):
                _refuse(
                    f"{where}.positions.{i}",
                    f"position {position} is past the prompt "
                    f"({prompt_tokens} tokens) or the source ({len(source)} tokens)",
                )
        return Intervention("patch", body.layer, source=source, positions=tuple(body.positions))
    return Intervention("ablate_mlp", body.layer)


def _ids(profile: ModelProfile, text: str, field: str) -> tuple[int, ...]:
    """A text's token ids, as a prompt's are (the tokenizer's special tokens included);
    it must fit the model's context, as a prompt must (the engine reads it in one pass)."""
    try:
        _, ids = run_off_hub(prompts.encode, profile, PromptInput(prompt=text))
        profile.check_context(len(ids))
    except BadRequest as exc:
        raise BadRequest(f"{field}: {exc.message}", param=field) from None
    return tuple(ids)


def _refuse(field: str, message: str) -> NoReturn:
    raise BadRequest(f"{field}: {message}", param=field)
