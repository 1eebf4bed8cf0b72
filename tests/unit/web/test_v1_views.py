"""OpenAI's views of a run and its chunk framer, from folded events alone (no engine)."""

from __future__ import annotations

import json

from app.engine import Alternative, DoneEvent, TokenEvent
from app.errors import ShuttingDown
from app.web.serving.run import Choice, Prompt, Run
from app.web.v1.streams import DONE, ChunkFramer
from app.web.v1.views import NO_LOGPROB, ChatView, CompletionView, Meta, finish_reason, usage

META = Meta("cmpl-1", 1700000000, "m")
HI = Prompt(0, "Hi", [1, 2])


class Job:
    """Enough of a job for a choice that has one."""


def folded(*events, prompt=HI):
    choice = Choice(0, prompt, Job())  # type: ignore[arg-type]
    for event in events:
        choice.add(event)
    return choice


def tok(text, logprob=-1.0, top=()):
    return TokenEvent(3, text, text, False, logprob, top)


def test_a_completion_with_logprobs_counts_offsets_across_its_tokens():
    top = (Alternative(3, " a", -1.0), Alternative(4, " a", -2.0), Alternative(5, "b", -3.0))
    choice = folded(tok(" a", -1.0, top), tok("bc", float("-inf")), DoneEvent("stop", 2, 2))
    answer = CompletionView(META, echo=False, top=2, scores={}).whole([choice])
    assert answer["object"] == "text_completion" and answer["id"] == "cmpl-1"
    shown = answer["choices"][0]
    assert shown["text"] == " abc" and shown["finish_reason"] == "stop"
    assert shown["logprobs"] == {
        "tokens": [" a", "bc"],
        "token_logprobs": [-1.0, NO_LOGPROB],
        "top_logprobs": [{" a": -1.0, "b": -3.0}, {}],
        "text_offset": [0, 2],
    }
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_completion_chunks_skip_empty_tokens_and_end_with_the_reason():
    view = CompletionView(META, echo=False, top=None, scores={})
    choice = folded(tok(""), tok("x"), DoneEvent("length", 2, 2, "y"))
    assert view.chunks(choice, tok("")) == []
    (chunk,) = view.chunks(choice, DoneEvent("length", 2, 2, "y"))
    assert chunk["choices"] == [
        {"index": 0, "text": "y", "logprobs": None, "finish_reason": "length"}
    ]


def test_a_chat_stream_opens_with_the_role_and_ends_with_a_reason_chunk():
    view = ChatView(Meta("chatcmpl-1", 0, "m"), logprobs=False)
    choice = folded(tok("Hi"), DoneEvent("eos", 2, 1, "!"))
    (opening,) = view.opening(choice)
    assert opening["object"] == "chat.completion.chunk"
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    end = view.chunks(choice, DoneEvent("eos", 2, 1, "!"))
    assert [c["choices"][0]["delta"] for c in end] == [{"content": "!"}, {}]
    assert end[-1]["choices"][0]["finish_reason"] == "stop" == finish_reason(choice)


def test_usage_counts_each_prompt_once():
    prompt = Prompt(0, "Hi", [1, 2, 3])
    choices = [folded(tok("a"), prompt=prompt), folded(tok("b"), tok("c"), prompt=prompt)]
    assert usage(choices) == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_the_chunk_framer_adds_null_usage_then_a_usage_chunk_and_done():
    choice = folded(tok("a"), DoneEvent("length", 2, 1))
    framer = ChunkFramer(ChatView(Meta("chatcmpl-1", 0, "m"), logprobs=False), True)
    run = Run("m", [choice], {})
    sent = [*framer.opening(run), *framer.frame(choice, tok("a")), *framer.closing(run)]
    assert sent[-1] == DONE == b"data: [DONE]\n\n"
    chunks = [json.loads(raw.decode().removeprefix("data: ")) for raw in sent[:-1]]
    assert [c["usage"] for c in chunks[:-1]] == [None, None]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 1


def test_the_chunk_framer_shows_no_shutdown_end_and_fails_in_openais_shape():
    choice = folded(tok("a"))
    framer = ChunkFramer(CompletionView(META, echo=False, top=None, scores={}), False)
    assert list(framer.frame(choice, DoneEvent("shutdown", 2, 1, "tail"))) == []
    error, done = framer.fail(ShuttingDown())
    assert done == DONE
    body = json.loads(error.decode().removeprefix("data: "))
    assert body["error"]["code"] == "shutting_down" and body["error"]["type"] == "server_error"
