"""One client for every server: N concurrent streamed `/v1/completions`, greedy.

The same requests go to this server and to each peer; only the spelling of "keep going
past end-of-sequence" differs (`Spelling`). Tokens are counted from the usage a stream
reports at its end (`stream_options.include_usage`, or the usage a server sends anyway);
a server that reports none is counted by its text chunks instead, and the result says
which (`Load.counted_by`).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

# The request body's extra fields for `max_tokens` new tokens, past end-of-sequence.
Spelling = Callable[[int], dict]


def ignore_eos(max_tokens: int) -> dict:
    """vLLM's extension, which this server and llama.cpp's `llama-server` accept too."""
    return {"ignore_eos": True, "stream_options": {"include_usage": True}}


def min_new_tokens(max_tokens: int) -> dict:
    """`transformers serve`: it refuses `ignore_eos` (422, unexpected field) but takes a whole
    GenerationConfig as JSON, where `min_new_tokens` holds end-of-sequence back. It sends the
    usage in its last chunk unasked (and ignores `stream_options`, so none is sent)."""
    config = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
    return {"generation_config": json.dumps(config)}


@dataclass(frozen=True)
class Stream:
    """One streamed completion. Seconds from sending the request; `usage_tokens` is the
    server's `usage.completion_tokens` (None: it sent no usage)."""

    first_token_s: float
    text_chunks: int
    usage_tokens: int | None


@dataclass(frozen=True)
class Load:
    """N streams started together. `tokens` / `wall_s` is the aggregate rate; `short` counts
    the streams that ended before `max_tokens` (a server that stopped at end-of-sequence)."""

    streams: int
    wall_s: float
    tokens: int
    counted_by: str  # "usage" or "chunks"
    first_token_s: float  # the median over the streams
    short: int

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second, all streams together."""
        return self.tokens / self.wall_s


def stream_completion(
    base_url: str, body: dict, timeout: float = 900, started: float | None = None
) -> Stream:
    """POST `body` (with `stream: true`) to `base_url`/v1/completions and read it to [DONE].

    Raises:
        requests.HTTPError: the server answered with an error status.
        RuntimeError: the stream held an error event, or no text at all.
    """
    started = time.perf_counter() if started is None else started
    first: float | None = None
    chunks = 0
    usage: int | None = None
    url = base_url + "/v1/completions"
    with requests.post(url, json={**body, "stream": True}, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (pings), other fields
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"{url}: error in the stream: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens", usage)
            if any(choice.get("text") for choice in chunk.get("choices") or []):
                chunks += 1
                first = first or time.perf_counter()
    if first is None:
        raise RuntimeError(f"{url}: the stream held no text")
    return Stream(first - started, chunks, usage)


def run_load(base_url: str, model: str, streams: int, max_tokens: int, spelling: Spelling) -> Load:
    """`streams` concurrent completions of `max_tokens` tokens each, prompts differing only
    in a number (no prefix cache serves one stream from another's work).

    Raises:
        RuntimeError: a stream failed (the first failure, with its cause).
    """
    results: list[Stream | None] = [None] * streams
    errors: list[BaseException] = []
    gate = threading.Barrier(streams + 1)

    def one(index: int) -> None:
        body = {
            "model": model,
            "prompt": f"ROMEO {index}:",
            "max_tokens": max_tokens,
            "temperature": 0,
            **spelling(max_tokens),
        }
        gate.wait()
        try:
            results[index] = stream_completion(base_url, body, started=started)
        except Exception as error:  # noqa: BLE001 - reported below, with the first cause
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()  # read by the threads once the gate opens
    gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {streams} streams failed") from errors[0]
    done = [r for r in results if r is not None]
    by_usage = all(r.usage_tokens is not None for r in done)
    counts = [r.usage_tokens if by_usage else r.text_chunks for r in done]
    return Load(
        streams=streams,
        wall_s=wall,
        tokens=sum(c or 0 for c in counts),
        counted_by="usage" if by_usage else "chunks",
        first_token_s=statistics.median(r.first_token_s for r in done),
        short=sum(1 for c in counts if (c or 0) < max_tokens),
    )
