"""Request bodies of the OpenAI-compatible API, as OpenAI's API reference defines them.

Every field is either supported or refused with a 400 that names it: a field this
server does not know is refused too (as OpenAI's own API does), never ignored.
`null` means the field's default throughout, as OpenAI clients send it.
Beyond OpenAI's fields, `top_k`, `repetition_penalty` and `ignore_eos` are accepted
as vLLM accepts them (the `openai` client sends them with `extra_body`), and this server's
`interventions`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.web.bodies import Interventions

StopText = Annotated[str, Field(min_length=1, max_length=256)]
# One text or a list of them; validated as a list, so an error names `stop.0`, not a union member.
StopList = Annotated[
    list[StopText],
    BeforeValidator(
        lambda v: [v] if isinstance(v, str) else v, json_schema_input_type=str | list[str]
    ),
]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
_LIMITED = "is not supported by this server"
# A `logit_bias` key: a token id in ASCII decimal digits (leading zeros allowed).
_TOKEN_ID = re.compile(r"[0-9]{1,20}")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    """`stream_options`: what a stream adds besides the choices."""

    include_usage: bool | None = Field(
        None, description="Send one last chunk, `choices: []`, with the usage."
    )


class _Sampling(_Body):
    model: str | None = Field(
        None, min_length=1, max_length=256, description="Model id; null: the server's default."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1; 0: greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Default 1; 0: likeliest only.")
    n: int | None = Field(None, ge=1, le=16, description="Choices per prompt; default 1.")
    stop: StopList | None = Field(
        None, description="Up to 8 strings; the text ends before the first one."
    )
    seed: Seed | None = Field(None, description="Choice i samples with seed + i.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Default 0.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Default 0.")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=1024, description="Token id (ASCII digits) to a bias added to its logit."
    )
    stream: bool | None = Field(None, description="Answer as Server-Sent Events.")
    stream_options: StreamOptions | None = Field(None, description="Only with `stream: true`.")
    user: str | None = Field(None, max_length=256, description="Your end user's id; logged.")
    # vLLM's extensions, for clients that send them with extra_body.
    top_k: int | None = Field(None, ge=0, description="Keep the k likeliest; 0: off.")
    repetition_penalty: float | None = Field(None, gt=0, description="Default 1 (none).")
    ignore_eos: bool | None = Field(None, description="Keep going past end-of-sequence.")
    # This server's extension, as on /generate (docs/api.md, Interventions).
    interventions: Interventions | None = None

    @model_validator(mode="after")
    def _check_common(self) -> _Sampling:
        if self.stop is not None and len(self.stop) > 8:
            raise ValueError("stop: at most 8 strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when `stream` is true")
        ids: dict[int, str] = {}
        for key in self.logit_bias or {}:
            # Only ASCII digits: str.isdigit() also passes "²" (which int() refuses) and
            # int() reads "٣" or "０" as other scripts' digits (vLLM PR #16529). The length
            # bound keeps int() within its 4300-digit limit; no vocabulary is that large.
            if not _TOKEN_ID.fullmatch(key):
                shown = repr(key) if len(key) <= 32 else repr(key[:32]) + "..."
                raise ValueError(f'logit_bias: keys are token ids, like "50256", not {shown}')
            if (same := ids.setdefault(int(key), key)) != key:
                raise ValueError(f"logit_bias: keys {same!r} and {key!r} name the same token id")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        """`stop` as a tuple of strings."""
        return tuple(self.stop or ())


class CompletionRequest(_Sampling):
    """Body of POST /v1/completions."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=32)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=32)]
    ) = Field(description="A text, a list of texts, token ids, or lists of token ids.")
    max_tokens: int | None = Field(None, ge=0, description="Default 16; 0 with echo scores only.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Alternatives per token, 0 to 5.")
    echo: bool | None = Field(None, description="Prefix the prompt (and its logprobs).")
    suffix: str | None = Field(None, description=f"Insertion: {_LIMITED}; only null.")
    best_of: int | None = Field(None, ge=1, description="Only null or equal to `n`.")

    @model_validator(mode="before")
    @classmethod
    def _check_prompt_kind(cls, data: Any) -> Any:
        # One clear message instead of one per member of the union.
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if prompt is None or isinstance(prompt, str):
            return data

        def kind(item: Any) -> str:
            if isinstance(item, str):
                return "text"
            if type(item) is int:
                return "id" if item >= 0 else "other"
            ids = isinstance(item, list) and item and all(kind(i) == "id" for i in item)
            return "ids" if ids else "other"

        kinds = {kind(item) for item in prompt} if isinstance(prompt, list) else {"other"}
        if not isinstance(prompt, list) or not prompt or len(kinds) != 1 or "other" in kinds:
            raise ValueError(
                "prompt: must be a text, a list of texts, a list of token ids, "
                "or a list of lists of token ids (none of them empty, ids not negative)"
            )
        return data

    @model_validator(mode="after")
    def _check_unsupported(self) -> CompletionRequest:
        if self.suffix is not None:
            raise ValueError(f"suffix: text insertion {_LIMITED}; send null")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ValueError(f"best_of: ranking extra samples {_LIMITED}; send null or `n`")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]
        return cast(list[str | list[int]], list(prompt))  # texts, or lists of ids


class ChatTextPart(BaseModel):
    """A `{"type": "text", "text": ...}` part of a message's content."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"] = Field(description="Only text: this server takes no images or audio.")
    text: str


# A text or a list of text parts; validated as parts, so an error names `content.0`.
ChatContent = Annotated[
    list[ChatTextPart],
    Field(max_length=256),
    BeforeValidator(
        lambda v: [{"type": "text", "text": v}] if isinstance(v, str) else v,
        json_schema_input_type=str | list[ChatTextPart],
    ),
]


class ChatCompletionMessage(BaseModel):
    """One message of `messages`; it goes through the model's chat template."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: ChatContent | None = None
    name: str | None = Field(None, max_length=256)

    def text(self) -> str:
        """The content as one text (parts joined, as OpenAI does)."""
        return "".join(part.text for part in self.content or ())


class ResponseFormat(BaseModel):
    """`response_format`: only plain text."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"] = Field(description=f"json_object and json_schema: {_LIMITED}.")


class ChatCompletionRequest(_Sampling):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatCompletionMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Default: the rest of the context, up to LLMVIZ_MAX_NEW_TOKENS."
    )
    max_tokens: int | None = Field(None, ge=1, description="The older name of the field above.")
    logprobs: bool | None = Field(None, description="Return each token's logprob.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: 0 to 20.")
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Any], Field(max_length=0)] | None = Field(
        None, description=f"Tool calling {_LIMITED}: only null or []."
    )
    tool_choice: Literal["none"] | None = Field(None, description='Only null or "none".')
    parallel_tool_calls: bool | None = Field(None, description="Accepted; there are no tools.")

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs `logprobs: true`")
        both = (self.max_tokens, self.max_completion_tokens)
        if None not in both and both[0] != both[1]:
            raise ValueError("max_tokens: differs from max_completion_tokens; send one of them")
        return self

    @property
    def token_limit(self) -> int | None:
        """The most tokens to generate, if the client set it."""
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """The messages as the chat template takes them."""
        return [
            {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
            for m in self.messages
        ]


def logit_bias(body: _Sampling) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs."""
    return tuple((int(key), value) for key, value in (body.logit_bias or {}).items())
