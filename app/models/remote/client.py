"""Streams from a remote OpenAI-compatible server, read token by token.

The engines answer logprobs in two shapes, and this reads both wherever they come:
- OpenAI's legacy completions shape, `logprobs: {tokens, token_logprobs, top_logprobs:
  [{text: logprob}], text_offset}` (vLLM, this server, Ollama);
- the chat shape, `logprobs: {content: [{token, logprob, id?, top_logprobs: [{token,
  logprob, id?}]}]}`: chat completions everywhere, and llama.cpp's `llama-server` on
  `/v1/completions` too (with token ids).
Token ids come from the chat shape's `id` (llama.cpp) or from vLLM's `token_ids` extension
(`return_token_ids`, which this server also takes); an engine that gives neither leaves
them unknown (None).

Every failure becomes one of app.errors' remote errors: a refused connection or the
remote's 5xx is 502, no answer within the timeout 504, the remote's 4xx passed on with its
status and message. A stream cut before its end is `RemoteFailed` raised by the reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from app.errors import RemoteFailed, RemoteRefused, RemoteTimeout
from app.remotes import RemoteSpec

# Seconds to open a connection: a remote that takes longer is not there.
CONNECT_SECONDS = 5.0
_TOKEN_ID = re.compile(r"token_id:(\d+)")  # vLLM's return_tokens_as_token_ids form
# The remote's 4xx that are the client's to fix: passed on. Others (401, 403, 404: this
# server's settings for the remote are wrong) are a 502.
_CLIENT_STATUSES = (400, 413, 422, 429)


@dataclass(frozen=True)
class RemoteAlternative:
    """A token the remote could have chosen."""

    text: str
    token_id: int | None
    logprob: float | None


@dataclass(frozen=True)
class RemoteToken:
    """One generated token: the text it adds, its id when the remote tells, its logprob and
    alternatives when asked for."""

    text: str
    token_id: int | None = None
    logprob: float | None = None
    top: tuple[RemoteAlternative, ...] = ()


@dataclass(frozen=True)
class RemoteText:
    """Text that is no token of its own: in a stream with per-token logprobs, a chunk that
    carries text and no logprobs (a server sending text it held back, as this server does at
    the end of a stream)."""

    text: str


@dataclass(frozen=True)
class RemoteEnd:
    """How the remote's generation ended: `finish_reason` as the remote says it (`stop`,
    `length`), `stop_reason` where vLLM adds it (the stop string, or a stop token's id),
    and its usage, where it sent some."""

    finish_reason: str | None
    stop_reason: str | int | None
    prompt_tokens: int | None
    completion_tokens: int | None


def open_stream(
    spec: RemoteSpec, endpoint: str, body: dict[str, Any], session: requests.Session
) -> requests.Response:
    """POST `body` (with `stream: true`) to the remote's `endpoint` ("completions" or
    "chat/completions"); the response once its headers are in.

    Raises:
        RemoteFailed: refused, reset, or the remote's 5xx or unexpected 4xx.
        RemoteTimeout: no answer within the spec's timeout.
        RemoteRefused: the remote's 400/413/422/429, with its message.
    """
    headers = {"Accept": "text/event-stream"}
    key = spec.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = f"{spec.url}/{endpoint}"
    try:
        response = session.post(
            url,
            json={**body, "stream": True},
            headers=headers,
            stream=True,
            timeout=(CONNECT_SECONDS, spec.timeout),
        )
    except requests.Timeout:
        raise RemoteTimeout(_said(spec, f"no answer within {spec.timeout:g} s")) from None
    except requests.RequestException as exc:
        raise RemoteFailed(_said(spec, f"cannot be reached ({_reason(exc)})")) from None
    if response.status_code != 200:
        raise _refusal(spec, response)
    return response


def read_tokens(
    spec: RemoteSpec, response: requests.Response, logprobs: bool = False
) -> Iterator[RemoteToken | RemoteText | RemoteEnd]:
    """The tokens of a streamed completion or chat completion, then one RemoteEnd. With
    `logprobs` (they were asked for), a chunk's text without them is RemoteText, not a
    token; without, each chunk that adds text is one token (all a server tells).

    Raises:
        RemoteFailed: the stream broke off, sent an error, or ended without finishing.
        RemoteTimeout: the remote went silent for longer than its timeout.
    """
    finish: tuple[str | None, str | int | None] | None = None
    usage: dict[str, Any] = {}
    try:
        for data in _event_data(response):
            if data == "[DONE]":
                break
            chunk = _json(spec, data)
            if "error" in chunk:
                raise RemoteFailed(_said(spec, f"failed mid-stream: {_message(chunk['error'])}"))
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                yield from _tokens(choice, logprobs)
                if choice.get("finish_reason"):
                    finish = (choice["finish_reason"], choice.get("stop_reason"))
        else:
            raise RemoteFailed(_said(spec, "ended its stream before it finished"))
    except requests.Timeout:
        raise RemoteTimeout(_said(spec, f"sent nothing for {spec.timeout:g} s")) from None
    except requests.RequestException as exc:
        raise RemoteFailed(_said(spec, f"broke off its stream ({_reason(exc)})")) from None
    if finish is None:
        raise RemoteFailed(_said(spec, "ended its stream without a finish reason"))
    yield RemoteEnd(
        finish[0], finish[1], usage.get("prompt_tokens"), usage.get("completion_tokens")
    )


def _tokens(choice: dict[str, Any], logprobs: bool) -> Iterator[RemoteToken | RemoteText]:
    """One choice of one chunk, as tokens: its logprobs' entries, or else its text."""
    delta = choice.get("delta")
    text = (delta or {}).get("content") if delta is not None else choice.get("text")
    text = text or ""
    ids = choice.get("token_ids") or []
    entries = _entries(choice.get("logprobs"))
    if not entries:
        if logprobs and not ids:
            if text:
                yield RemoteText(text)
        elif text or ids:
            yield RemoteToken(text, ids[0] if len(ids) == 1 else None)
        return
    pieces = [entry.text for entry in entries]
    if len(entries) == 1 or "".join(pieces) != text:
        # The chunk's text is the stream's truth (a token's own text may be a special
        # token's name, or empty mid-character): it goes to the last token.
        pieces = [""] * (len(entries) - 1) + [text]
    for i, (entry, piece) in enumerate(zip(entries, pieces, strict=True)):
        token_id = ids[i] if len(ids) == len(entries) else entry.token_id
        yield RemoteToken(piece, token_id, entry.logprob, entry.top)


def _entries(logprobs: Any) -> list[RemoteToken]:
    """Per-token logprobs in either shape (text = the token's own text)."""
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):  # the chat shape
        return [
            RemoteToken(
                str(entry.get("token", "")),
                _id(entry),
                entry.get("logprob"),
                tuple(
                    RemoteAlternative(str(alt.get("token", "")), _id(alt), alt.get("logprob"))
                    for alt in entry.get("top_logprobs") or []
                ),
            )
            for entry in logprobs["content"]
        ]
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or [None] * len(tokens)
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [
        RemoteToken(
            *_text_and_id(token),
            value,
            tuple(RemoteAlternative(*_text_and_id(t), p) for t, p in (top or {}).items()),
        )
        for token, value, top in zip(tokens, values, tops, strict=False)
    ]


def _id(entry: dict[str, Any]) -> int | None:
    value = entry.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_and_id(token: str) -> tuple[str, int | None]:
    match = _TOKEN_ID.fullmatch(token)
    return ("", int(match.group(1))) if match else (token, None)


def _lines(response: requests.Response) -> Iterator[str]:
    """The stream's lines as they arrive. Not `iter_lines()`: it reads 512 bytes at a time
    and waits for them, holding each token back until the next ones fill the block (and
    TCP's delayed acknowledgement stretches that wait): 15 ms a token instead of 4.4 on the
    demo model."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def _event_data(response: requests.Response) -> Iterator[str]:
    """The `data` of each Server-Sent Event (comments and other fields skipped)."""
    data: list[str] = []
    for line in _lines(response):
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def _json(spec: RemoteSpec, data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise RemoteFailed(_said(spec, "sent an event that is not JSON")) from None
    if not isinstance(chunk, dict):
        raise RemoteFailed(_said(spec, "sent an event that is not a JSON object"))
    return chunk


def _refusal(spec: RemoteSpec, response: requests.Response) -> Exception:
    """The error for a remote's answer other than 200 (its body read, then closed)."""
    try:
        body = response.json()
        message = _message(body.get("error", body) if isinstance(body, dict) else body)
    except ValueError:
        message = response.text[:500].strip() or response.reason
    finally:
        response.close()
    status = response.status_code
    said = _said(spec, f"answered {status}: {message}")
    if status in _CLIENT_STATUSES:
        retry = response.headers.get("Retry-After")
        return RemoteRefused(said, status, {"Retry-After": retry} if retry else None)
    if status == 504:
        return RemoteTimeout(said)
    return RemoteFailed(said)


def _message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("error") or error
    return str(error)[:500]


def _said(spec: RemoteSpec, what: str) -> str:
    return f"the remote server of model {spec.model_id!r} ({spec.host}) {what}"


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower():
        return "connection refused"
    return type(exc).__name__
