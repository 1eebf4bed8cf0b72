"""Response bodies of the OpenAI-compatible API, in the shapes of OpenAI's API reference.

Logprobs are natural logarithms. JSON has no -Infinity: a logprob that is -inf (a token
the model rules out) is sent as -9999.0, as OpenAI's own answers do; the native API
sends null for the same case. The first echoed prompt token has no logprob: null.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIError(_Out):
    """What went wrong, for people (`message`) and programs (`type`, `code`)."""

    message: str
    type: str = Field(description="invalid_request_error, authentication_error, server_error...")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="This server's error code, as the native API's.")


class OpenAIErrorResponse(_Out):
    """Every /v1 error: `{"error": {...}}`."""

    error: OpenAIError


class Model(_Out):
    """One model."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time: its folder's, or when it was loaded; else 0.")
    owned_by: str


class ModelList(_Out):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[Model]


class Usage(_Out):
    """Tokens counted: each prompt once, and every generated token of every choice."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Envelope(_Out):
    """What every answer and stream chunk has around its choices."""

    id: str = Field(description="One id per request: every chunk of a stream has it.")
    created: int = Field(description="Unix time of the request.")
    model: str
    system_fingerprint: None = None


class CompletionLogprobs(_Out):
    """Per token of a choice's text: its text, logprob, alternatives and character offset."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")


class CompletionChoice(_Out):
    """One choice of a completion (or its part, in a stream chunk)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class Completion(_Envelope):
    """POST /v1/completions, and each chunk of its stream."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(_Out):
    """An alternative token."""

    token: str
    logprob: float
    bytes: list[int] | None = Field(description="The UTF-8 of the text the token completes.")


class TokenLogprob(TopLogprob):
    """A chosen token, with its likeliest alternatives."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Out):
    """A chat choice's logprobs (the chat shape: one entry per token)."""

    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(_Out):
    """The assistant's message."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(_Out):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(_Envelope):
    """POST /v1/chat/completions."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Out):
    """What a stream chunk adds to a message: the role first, then pieces of content."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Out):
    """One choice's part of a stream chunk."""

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Envelope):
    """One `data:` event of a chat completion stream."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
