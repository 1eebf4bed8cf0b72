"""Request bodies: every field a client can send is declared and validated here, and only here."""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import BadRequest

# A list of head indices: at least one (no heads at all is a mistake, not a selection).
HeadList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1024)]

M = TypeVar("M", bound=BaseModel)  # a request body model, native or OpenAI
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Body(BaseModel):
    # Strict types: "5" is not an int and 1 is not a bool. Unknown fields are ignored.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model_id: str | None = Field(
        None, min_length=1, max_length=256, description="Model folder or Hugging Face id."
    )

    @model_validator(mode="before")
    @classmethod
    def _model_alias(cls, data: object) -> object:
        """`model` (OpenAI's name, which clients send out of habit) means `model_id`: as an
        ignored unknown field it would silently get the default model's answer instead."""
        if not isinstance(data, dict) or "model" not in data:
            return data
        if "model_id" not in data:
            return {**{k: v for k, v in data.items() if k != "model"}, "model_id": data["model"]}
        if data["model_id"] != data["model"]:
            raise ValueError("`model` and `model_id` name different models: give `model_id`")
        return data


Layer = Annotated[int, Field(ge=0, description="A decoder layer, from 0.")]


class _Intervention(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class AblateHead(_Intervention):
    """Zero head `head`'s output in layer `layer` (its slice before the output projection)."""

    kind: Literal["ablate_head"]
    layer: Layer
    head: int = Field(ge=0, description="A query head, from 0.")


class AblateMlp(_Intervention):
    """Zero the MLP block's output in layer `layer`."""

    kind: Literal["ablate_mlp"]
    layer: Layer


class Steer(_Intervention):
    """Add `scale` × `vector` to the residual stream entering `layer`, at every position;
    or the vector of a `contrast`: the stream entering `layer` at the last token of the first
    text minus that of the second (activation addition, Turner et al. 2023)."""

    kind: Literal["steer"]
    layer: Layer
    # Bounded like `scale`: a product past float32's range (3.4e38) would be inf, then NaN.
    vector: list[Annotated[float, Field(ge=-1e4, le=1e4)]] | None = Field(
        None, max_length=65536, description="[d_model] floats."
    )
    contrast: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        None, min_length=2, max_length=2, description="Two texts, instead of `vector`."
    )
    scale: float = Field(1.0, ge=-1e4, le=1e4)

    @model_validator(mode="after")
    def _one_direction(self) -> Steer:
        if (self.vector is None) == (self.contrast is None):
            raise ValueError("give exactly one of `vector` and `contrast`")
        return self


class Patch(_Intervention):
    """Replace the residual stream entering `layer` at `positions` by `source`'s there."""

    kind: Literal["patch"]
    layer: Layer
    source: str = Field(min_length=1, max_length=16384, description="The text to patch from.")
    positions: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=1024)


InterventionBody = Annotated[AblateHead | AblateMlp | Steer | Patch, Field(discriminator="kind")]
_INTERVENTION_KINDS = {"ablate_head", "ablate_mlp", "steer", "patch"}
Interventions = Annotated[
    list[InterventionBody],
    Field(max_length=32, description="Applied together (docs/api.md, Interventions)."),
]


class ConfigRequest(_Body):
    """Body of POST /config."""


class ChatMessage(BaseModel):
    """One turn of a conversation, rendered with the model's chat template."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: str = Field(min_length=1, max_length=64, description="system, user, assistant, ...")
    content: str = Field(description="The message text.")


class _PromptBody(_Body):
    prompt: str | None = Field(None, description="Input text.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=256, description="A chat, instead of `prompt`."
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> _PromptBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self


class TokenizeRequest(_PromptBody):
    """Body of POST /tokenize."""

    add_special_tokens: bool | None = Field(
        None, description="Add BOS/EOS as the tokenizer does by default; null means its default."
    )


class DetokenizeRequest(_Body):
    """Body of POST /detokenize."""

    token_ids: list[int] = Field(max_length=1_000_000, description="Token ids to decode.")
    skip_special_tokens: bool = Field(True, description="Leave out BOS, EOS and the like.")


class GenerateRequest(_PromptBody):
    """Body of POST /generate and POST /generate/stream."""

    max_new_tokens: int = Field(128, ge=1, description="Most tokens to generate.")
    temperature: float = Field(0.7, ge=0, description="0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep the k likeliest tokens; 0 turns it off.")
    repetition_penalty: float = Field(1.0, gt=0, description="1.0 means no penalty.")
    presence_penalty: float = Field(
        0.0, ge=-2, le=2, description="Subtracted from the logit of every token generated so far."
    )
    frequency_penalty: float = Field(
        0.0, ge=-2, le=2, description="Times each token's count so far, subtracted from its logit."
    )
    # 2**53: the largest integer a browser's JSON numbers hold exactly.
    seed: int | None = Field(None, ge=0, le=2**53, description="Seed for reproducible sampling.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence.")
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=8, description="End at the first of these strings."
    )
    return_full_text: bool = Field(True, description="Prefix the prompt to the answer.")
    details: bool = Field(False, description="Add per-token ids, logprobs and timing.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Alternatives per token (details).")
    attention: Literal["last_row"] | None = Field(
        None, description="With details: each token's attention row, live."
    )
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=1024, description="Layers for `attention`; null: all."
    )
    heads: Literal["all"] | HeadList = Field("all", description="Heads for `attention`.")
    interventions: Interventions = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_combinations(self) -> GenerateRequest:
        if self.attention is not None and not self.details:
            raise ValueError("`attention` needs `details: true`")
        if self.top_logprobs and not self.details:
            raise ValueError("`top_logprobs` needs `details: true`")
        return self


def parse_body(model: type[M], payload: object) -> M:
    """Validate a decoded JSON body, turning every problem into one 400 message."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    if where := _first_surrogate(payload):
        raise BadRequest(
            f"invalid request: {where}: holds an unpaired UTF-16 surrogate escape "
            "(such as \\ud800 alone), which is not a Unicode character; send valid text",
            param=where,
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(_describe(exc), param=_first_field(exc)) from None


def _first_surrogate(payload: object) -> str | None:
    """The path of the first string (or key) holding a lone surrogate, like `messages.0.content`.

    JSON's `\\ud800` escapes decode to such strings, which no tokenizer can encode.
    """
    stack: list[tuple[str, object]] = [("", payload)]
    while stack:  # iterative: the body may be nested about as deep as the JSON parser allows
        path, value = stack.pop()
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list)
            else ()
        )
        for key, item in items:
            where = f"{path}.{key}" if path else str(key)
            if _SURROGATE.search(str(key)) or (isinstance(item, str) and _SURROGATE.search(item)):
                return where
            if isinstance(item, dict | list):
                stack.append((where, item))
    return None


def _first_field(exc: ValidationError) -> str | None:
    """The field the first problem is in (`stop.1`), or the one a cross-field check names."""
    err = exc.errors(include_url=False)[0]
    if err["loc"]:
        return _where(err["loc"])
    named = re.match(r"(?:Value error, )?`?([\w.]+)`?:", err["msg"])
    return named.group(1) if named else None


def _where(loc: tuple[int | str, ...]) -> str:
    """A field's path (`stop.1`), without the union members pydantic names: `list[str]`
    (their names hold brackets or dashes; field names are identifiers), and an
    intervention's `kind` (`interventions.0.steer.scale` is `interventions.0.scale`, as
    the checks against the model name their fields)."""
    kept = []
    for i, p in enumerate(loc):
        if isinstance(p, str) and set("[-") & set(p):
            continue
        if p in _INTERVENTION_KINDS and i and isinstance(loc[i - 1], int):
            continue
        kept.append(str(p))
    return ".".join(kept)


MAX_PROBLEMS = 10  # listed in one 400: a body can hold a problem per list item


def _describe(exc: ValidationError) -> str:
    """The first `MAX_PROBLEMS` problems, and how many more: a 1 MB body of 260,000 wrong
    token ids made a 13 MB message, built on the hub (1.5 s without /health)."""
    problems: list[str] = []
    errors = exc.errors(include_url=False)
    read = 0
    while read < len(errors) and len(problems) < MAX_PROBLEMS:
        err = errors[read]
        read += 1
        where = _where(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":  # the OpenAI API's bodies refuse unknown fields
            message = "this field is not supported by this server"
        # A check across fields has no location of its own; its message names the fields.
        problem = f"{where}: {message}" if where else message
        if problem not in problems:
            problems.append(problem)
    unread = len(errors) - read
    tail = f"; and {unread} more not listed" if unread else ""
    return "invalid request: " + "; ".join(problems) + tail


InspectPart = Literal["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


class AttentionOptions(BaseModel):
    """How /inspect returns attention patterns."""

    model_config = ConfigDict(extra="ignore", strict=True)

    format: Literal["topk", "dense"] = Field("topk", description="topk rows, or full matrices.")
    k: int = Field(8, ge=1, le=1024, description="Weights kept per query row (topk).")
    heads: Literal["all"] | HeadList = Field("all", description="Heads to return.")


class InspectRequest(_Body):
    """Body of POST /inspect."""

    prompt: str | None = Field(None, description="Input text.")
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=256)
    token_ids: list[int] | None = Field(None, min_length=1, description="Input token ids.")
    add_special_tokens: bool | None = Field(None, description="For `prompt`; null: default.")
    include: list[InspectPart] = Field(
        default_factory=lambda: list[InspectPart](["tokens", "next_token"]),
        min_length=1,
        description="Parts.",
    )
    top_k: int = Field(10, ge=1, le=100, description="Candidates per position.")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=1024, description="Layers to return; null: all."
    )
    attention: AttentionOptions = Field(default_factory=lambda: AttentionOptions.model_validate({}))
    interventions: Interventions = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_input(self) -> InspectRequest:
        given = [self.prompt is not None, self.messages is not None, self.token_ids is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of `prompt`, `messages` and `token_ids`")
        return self
