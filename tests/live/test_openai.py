"""The OpenAI-compatible API, driven by the official `openai` package against the real gunicorn
server: the sync and async clients, seeds, equality with the native API and the in-process
model, typed errors, and streams ([DONE], usage chunks, a client that leaves)."""

from __future__ import annotations

import asyncio
import json
import threading

import openai
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM

from tests.support.server import IDLE, wait_for
from tests.support.sse_client import SSEEvent

PROMPT = "Hello wörld 🦙 two  spaces"


def _client(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0, timeout=120)


def _async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url("/v1"), api_key="x", max_retries=0, timeout=120)


# -- models --


def test_models_are_listed_by_both_clients(server):
    listed = [model.id for model in _client(server).models.list()]
    assert {"llmviz/shakespeare", "llmviz/nano-sort", "tiny-gpt2", "tiny-llama"} <= set(listed)

    async def listing():
        async with _async_client(server) as client:
            page = await client.models.list()
            return [model.id async for model in page]

    assert asyncio.run(listing()) == listed
    one = _client(server).models.retrieve("llmviz/shakespeare")
    assert (one.id, one.object, one.owned_by) == ("llmviz/shakespeare", "model", "llmviz")
    assert one.created > 1_700_000_000  # the folder's time, not a made-up 0


# -- completions --


def test_greedy_completion_equals_generate_and_counts_real_tokens(server, chain_model):
    answer = _client(server).completions.create(
        model=chain_model, prompt="The", max_tokens=6, temperature=0
    )
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.choices[0].text == " cat sat on the mat."  # CHAINS, one GPT-2 token each
    assert answer.choices[0].text == server.generate(
        return_full_text=False, model_id=chain_model, prompt="The", max_new_tokens=6, temperature=0
    )
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1, 6)
    assert answer.usage.total_tokens == 7


def test_stop_strings_end_the_text_before_them(server, chain_model):
    answer = _client(server).completions.create(
        model=chain_model, prompt="The", max_tokens=12, temperature=0, stop=[" mat", "zzz"]
    )
    assert answer.choices[0].text == " cat sat on the"
    assert answer.choices[0].finish_reason == "stop"


def test_n_choices_with_a_seed_are_batch_rows_with_seeds_seed_plus_i(server):
    client = _client(server)
    params = dict(
        model="tiny-gpt2",
        prompt="Hello",
        n=3,
        seed=7,
        max_tokens=12,
        temperature=1,
        extra_body={"ignore_eos": True},
    )
    answer = client.completions.create(**params)
    texts = [choice.text for choice in answer.choices]
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert len(set(texts)) > 1  # three different samples, not one copied
    assert answer.usage.completion_tokens == 36
    again = client.completions.create(**params)
    assert [choice.text for choice in again.choices] == texts

    async def in_async():
        async with _async_client(server) as async_client:
            return await async_client.completions.create(**params)

    assert [choice.text for choice in asyncio.run(in_async()).choices] == texts
    for i, text in enumerate(texts):  # choice i is /generate with seed 7 + i
        native = server.generate(
            return_full_text=False,
            model_id="tiny-gpt2",
            prompt="Hello",
            seed=7 + i,
            max_new_tokens=12,
            temperature=1,
            top_p=1.0,
            ignore_eos=True,
        )
        assert native == text


def test_a_prompt_list_gives_n_choices_per_prompt_in_order(server, chain_model):
    answer = _client(server).completions.create(
        model=chain_model, prompt=["The", "Hello"], n=2, max_tokens=2, temperature=0
    )
    assert [c.text for c in answer.choices] == [" cat sat", " cat sat", " world\r", " world\r"]
    assert answer.usage.prompt_tokens == 2  # each prompt counted once, not once per choice
    assert answer.usage.completion_tokens == 8


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
def test_echo_prompt_logprobs_equal_the_in_process_model(server, model_root, model_id):
    answer = _client(server).completions.create(
        model=model_id, prompt=PROMPT, max_tokens=0, echo=True, logprobs=3
    )
    choice = answer.choices[0]
    assert choice.text == PROMPT
    assert answer.usage.completion_tokens == 0
    tokenized = requests.post(
        server.url("/tokenize"), json={"model_id": model_id, "prompt": PROMPT}, timeout=30
    ).json()
    ids = tokenized["token_ids"]
    logprobs = choice.logprobs
    assert logprobs.tokens == tokenized["tokens"]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].log_softmax(dim=-1)
    for i in range(1, len(ids)):
        want = expected[i - 1, ids[i]].item()
        assert logprobs.token_logprobs[i] == pytest.approx(want, abs=1e-4), i
        top = logprobs.top_logprobs[i]
        assert 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(expected[i - 1].max().item(), abs=1e-4)
    # text_offset slices the prompt: each token's text starts at its offset.
    assert logprobs.text_offset == [start for start, _ in tokenized["offsets"]]
    for token, offset, special in zip(
        logprobs.tokens, logprobs.text_offset, tokenized["special"], strict=True
    ):
        if not special:
            assert PROMPT[offset : offset + len(token)] == token


def test_echo_with_generation_offsets_run_on_into_the_completion(server, chain_model):
    answer = _client(server).completions.create(
        model=chain_model, prompt="Hello", max_tokens=3, echo=True, logprobs=1, temperature=0
    )
    choice = answer.choices[0]
    assert choice.text == "Hello world\r\n"
    tokens, offsets = choice.logprobs.tokens, choice.logprobs.text_offset
    assert tokens == ["Hello", " world", "\r", "\n"]
    assert [choice.text[o : o + len(t)] for t, o in zip(tokens, offsets, strict=True)] == tokens
    assert choice.logprobs.token_logprobs[0] is None
    assert all(isinstance(lp, float) for lp in choice.logprobs.token_logprobs[1:])


# -- chat --


def test_chat_stream_with_logprobs_sync(server):
    client = _client(server)
    messages = [{"role": "user", "content": "Hi there"}]
    params = dict(model="tiny-llama", messages=messages, max_tokens=10, seed=5, temperature=1)
    whole = client.chat.completions.create(**params, logprobs=True, top_logprobs=2)
    chunks = list(
        client.chat.completions.create(
            **params,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-2].choices[0]
    assert last.finish_reason == whole.choices[0].finish_reason
    assert last.delta.content is None and last.delta.role is None  # an empty delta
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage == whole.usage
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content
    streamed = [
        e for c in chunks[:-1] if c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in whole.choices[0].logprobs.content]
    assert len(streamed) == whole.usage.completion_tokens
    for entry in streamed:
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_chat_stream_with_logprobs_async(server):
    async def chat():
        async with _async_client(server) as client:
            stream = await client.chat.completions.create(
                model="tiny-llama",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=6,
                temperature=0,
                logprobs=True,
                stream=True,
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(chat())
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    greedy = server.generate(
        return_full_text=False,
        model_id="tiny-llama",
        messages=[{"role": "user", "content": "Hi"}],
        max_new_tokens=6,
        temperature=0,
    )
    assert text == greedy  # the chat template is the one /generate uses
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)


def test_a_model_without_a_chat_template_is_a_400(server):
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server).chat.completions.create(
            model="tiny-gpt2", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.body["message"] == (
        "model 'tiny-gpt2' has no chat template: send `prompt` instead of `messages`"
    )
    assert caught.value.param == "messages"


# -- streams --


@pytest.mark.parametrize(
    ("options", "usage_chunk"),
    [
        (None, False),
        ({}, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
    ],
)
def test_every_stream_ends_with_done_and_usage_comes_only_when_asked(server, options, usage_chunk):
    # Sampled at temperature 1 (OpenAI's default): without ignore_eos a choice may draw the
    # end-of-text token early (about 2% of runs on this 400-token vocabulary), and
    # completion_tokens would be under 8.
    body = {"model": "tiny-gpt2", "prompt": "Hi", "max_tokens": 4, "n": 2, "ignore_eos": True}
    if options is not None:
        body["stream_options"] = options
    streamed = server.stream("/v1/completions", **body, stream=True)
    events = [e for e in streamed if isinstance(e, SSEEvent)]
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert sorted(c["choices"][0]["index"] for c in finals) == [0, 1]
    with_usage = [c for c in chunks if c.get("usage")]
    if usage_chunk:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 8
        assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    else:
        assert with_usage == [] and all("usage" not in c for c in chunks)


def test_seeded_text_is_the_same_streamed_or_not_alone_or_among_four_others(server):
    client = _client(server)
    params = dict(model="slow-gpt2", prompt="Once upon", max_tokens=20, seed=42, temperature=1)
    alone = client.completions.create(**params).choices[0].text
    alone_streamed = "".join(
        c.choices[0].text for c in client.completions.create(**params, stream=True)
    )
    assert alone_streamed == alone
    stop = threading.Event()
    others = [threading.Thread(target=_keep_streaming, args=(server, i, stop)) for i in range(4)]
    for thread in others:
        thread.start()
    try:
        wait_for(
            lambda: server.stats("slow-gpt2", IDLE)["active"] >= 4, timeout=30, message="4 others"
        )
        busy = client.completions.create(**params).choices[0].text
        busy_streamed = "".join(
            c.choices[0].text for c in client.completions.create(**params, stream=True)
        )
        assert server.stats("slow-gpt2", IDLE)["active"] >= 4  # they were still running
    finally:
        stop.set()
        for thread in others:
            thread.join(timeout=60)
    assert busy == alone and busy_streamed == alone


def _keep_streaming(server, i: int, stop: threading.Event) -> None:
    stream = _client(server).completions.create(
        model="slow-gpt2",
        prompt=f"Other {i}",
        max_tokens=1000,
        temperature=1,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    with stream:
        for _ in stream:
            if stop.is_set():
                return


def test_a_client_that_leaves_a_stream_stops_its_job(server):
    client = _client(server)
    client.completions.create(model="slow-gpt2", prompt="warm", max_tokens=1)
    before = server.stats("slow-gpt2", IDLE)["generated_tokens"]
    stream = client.completions.create(
        model="slow-gpt2",
        prompt="Hi",
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    wait_for(
        lambda: server.stats("slow-gpt2", IDLE)["active"] == 0, timeout=10, message="job to end"
    )
    made = server.stats("slow-gpt2", IDLE)["generated_tokens"] - before
    assert made < 300, f"{made} tokens were generated for a reader that left after 3"


# -- errors --


def test_errors_are_the_clients_typed_errors_with_our_message(server, start_server):
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-gpt2", prompt="x", temperature=5)
    message = "invalid request: temperature: Input should be less than or equal to 2"
    assert bad.value.body["message"] == message and bad.value.message.endswith(message)
    assert (bad.value.param, bad.value.code, bad.value.type) == (
        "temperature",
        "bad_request",
        "invalid_request_error",
    )
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nobody/none", prompt="x")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert missing.value.body["message"].startswith("model 'nobody/none' is not under")
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.completions.create(model="tiny-gpt2", prompt="x", suffix="y")
    assert unsupported.value.param == "suffix"

    keyed = start_server(LLMVIZ_API_KEYS="sk-right", LLMVIZ_DEFAULT_MODEL="tiny-gpt2")
    with pytest.raises(openai.AuthenticationError) as wrong:
        _client(keyed, key="sk-wrong").models.list()
    assert wrong.value.body["message"] == "the API key is not valid"
    assert [m.id for m in _client(keyed, key="sk-right").models.list()]

    busy = start_server(
        LLMVIZ_DEFAULT_MODEL="slow-gpt2", LLMVIZ_MAX_BATCH="1", LLMVIZ_MAX_QUEUE="1"
    )
    stop = threading.Event()
    running = [threading.Thread(target=_keep_streaming, args=(busy, i, stop)) for i in range(2)]
    # One after the other: two arriving together could both find the model loading, and the
    # second the queue (of one) already taken by the first.
    running[0].start()
    wait_for(lambda: busy.stats("slow-gpt2", IDLE)["active"] == 1, timeout=60, message="a stream")
    running[1].start()
    try:  # one stream decodes, one waits in the queue: the queue is full
        wait_for(
            lambda: (
                busy.stats("slow-gpt2", IDLE)["active"] == 1
                and busy.stats("slow-gpt2", IDLE)["queued"] == 1
            ),
            timeout=60,
            message="a full queue",
        )
        with pytest.raises(openai.APIStatusError) as full:
            _client(busy).completions.create(model="slow-gpt2", prompt="x", max_tokens=2)
    finally:
        stop.set()
        for thread in running:
            thread.join(timeout=60)
    assert full.value.status_code == 503 and full.value.code == "overloaded"
    assert int(full.value.response.headers["Retry-After"]) >= 1  # from the queue: backlog.py
    assert full.value.message.endswith(full.value.body["message"])
    assert "queue" in full.value.body["message"]
    with pytest.raises(openai.BadRequestError) as never:  # more than the queue could ever hold
        _client(busy).completions.create(model="slow-gpt2", prompt="x", n=2, max_tokens=2)
    assert never.value.param == "n"
    wait_for(lambda: busy.stats("slow-gpt2", IDLE)["active"] == 0, timeout=30, message="idle")


V1_BAD_INPUTS = [
    ("POST", "/v1/completions", "{not json", 400),
    ("POST", "/v1/completions", "[]", 400),
    ("POST", "/v1/completions", '{"prompt": 5}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "n": 0}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "logprobs": 6}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "best_of": 3}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "stream_options": {"include_usage": true}}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "logit_bias": {"99999999": 5}}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "max_tokens": 99999}', 400),
    ("POST", "/v1/completions", '{"prompt": "x", "whatever": 1}', 400),
    ("POST", "/v1/completions", '{"prompt": "' + "x" * (1024 * 1024) + '"}', 413),
    ("POST", "/v1/chat/completions", '{"messages": []}', 400),
    ("POST", "/v1/chat/completions", '{"messages": [{"role": "robot", "content": "x"}]}', 400),
    (
        "POST",
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}',
        400,
    ),
    (
        "POST",
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
        400,
    ),
    (
        "POST",
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": '
        '[{"type": "image_url", "image_url": {"url": "x"}}]}]}',
        400,
    ),
    ("GET", "/v1/models/nobody/none", None, 404),
    ("GET", "/v1/no/such/thing", None, 404),
    ("PUT", "/v1/completions", "{}", 405),
]


def test_v1_errors_have_the_openai_shape_and_the_server_serves_on(server):
    for method, path, body, status in V1_BAD_INPUTS:
        answer = requests.request(
            method,
            server.url(path),
            data=body,
            timeout=60,
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == status, (path, body and body[:80], answer.text[:300])
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] == "invalid_request_error"
    assert _client(server).completions.create(model="tiny-gpt2", prompt="Hi", max_tokens=2)


def test_penalties_and_logit_bias_follow_openais_formula(server, model_root):
    """Greedy with penalties, checked step by step against the in-process model:
    logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty."""
    frequency, presence, steps = 1.5, 0.5, 5
    answer = _client(server).completions.create(
        model="tiny-gpt2",
        prompt="Hello",
        max_tokens=steps,
        temperature=0,
        logprobs=1,
        frequency_penalty=frequency,
        presence_penalty=presence,
        extra_body={"ignore_eos": True},
    )
    reported = answer.choices[0].logprobs.token_logprobs
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2", dtype=torch.float32)
    ids = requests.post(
        server.url("/tokenize"), json={"model_id": "tiny-gpt2", "prompt": "Hello"}, timeout=30
    ).json()["token_ids"]
    counts = torch.zeros(model.config.vocab_size)
    plain_choices = []
    with torch.no_grad():
        for step in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            penalized = logits - counts * frequency - (counts > 0).float() * presence
            token = int(penalized.argmax())
            plain_choices.append(int(logits.argmax()))
            assert reported[step] == pytest.approx(
                penalized.log_softmax(-1)[token].item(), abs=1e-4
            )
            counts[token] += 1
            ids.append(token)
    assert counts.max() < steps  # the penalties changed the greedy path: not one token 5 times
    (e_id,) = requests.post(
        server.url("/tokenize"), json={"model_id": "tiny-gpt2", "prompt": "e"}, timeout=30
    ).json()["token_ids"]
    biased = _client(server).completions.create(
        model="tiny-gpt2",
        prompt="Hello",
        max_tokens=4,
        temperature=0,
        logprobs=0,
        logit_bias={str(e_id): 100},
        extra_body={"ignore_eos": True},
    )
    assert biased.choices[0].text == "eeee"
    assert plain_choices != [e_id] * steps  # without the bias, "e" was not the greedy path
