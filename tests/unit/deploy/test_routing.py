"""deploy/ray/routing.py: which answers tell Serve that a replica holds a model.

No Ray: `hold` is a recording stand-in for the deployment's `@serve.multiplexed` function.
"""

from __future__ import annotations

import asyncio

import pytest

from deploy.ray.routing import ModelRouting, model_header


def _app(status: int):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    return app


def _run(status: int, headers: list, held: set[str]) -> list[str]:
    """One request through ModelRouting; the ids it reported to Serve."""
    reported: list[str] = []

    async def hold(model_id: str) -> str:
        reported.append(model_id)
        return model_id

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    routing = ModelRouting(_app(status), hold, held.__contains__)
    scope = {"type": "http", "method": "POST", "path": "/generate", "headers": headers}
    asyncio.run(routing(scope, receive, send))
    return reported


HEADER = [(b"serve_multiplexed_model_id", b"tiny-gpt2")]


def test_an_accepted_request_for_a_model_held_here_is_reported():
    assert _run(200, HEADER, {"tiny-gpt2"}) == ["tiny-gpt2", "tiny-gpt2"]  # at the head, the end


@pytest.mark.parametrize(
    ("status", "held", "headers"),
    [
        (401, {"tiny-gpt2"}, HEADER),  # a wrong key: nothing was checked
        (404, set(), HEADER),  # no such model
        (200, set(), HEADER),  # accepted, but the model is not here (GET /models)
        (200, {"tiny-gpt2"}, []),  # no header: Serve did not route it by model
        (200, {"tiny-gpt2"}, [(b"serve_multiplexed_model_id", b"  ")]),
    ],
    ids=["unauthorized", "not-found", "not-held", "no-header", "blank-header"],
)
def test_nothing_is_reported_for_other_requests(status, held, headers):
    assert _run(status, headers, held) == []


@pytest.mark.parametrize(
    "name",
    [b"serve_multiplexed_model_id", b"serve-multiplexed-model-id", b"SERVE_MULTIPLEXED_MODEL_ID"],
)
def test_the_header_is_read_as_serve_reads_it(name):
    assert model_header({"headers": [(b"host", b"x"), (name, b"llmviz/nano-sort")]}) == (
        "llmviz/nano-sort"
    )


def test_a_failing_report_does_not_fail_the_answer():
    sent: list[dict] = []

    async def hold(model_id: str) -> str:
        raise RuntimeError("the controller is away")

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    routing = ModelRouting(_app(200), hold, lambda model_id: True)
    asyncio.run(routing({"type": "http", "headers": HEADER}, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
