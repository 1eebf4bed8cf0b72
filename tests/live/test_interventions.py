"""Interventions over HTTP, on the real gunicorn server: what a generation and an /inspect
of an intervened model give (against the model changed here, in process, another way), a
plain stream beside intervened ones sharing their passes and keeping its tokens, and every
bad intervention a 400 naming the field before any work starts."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.engine import tensors
from tests.support.sse_client import SSEEvent, parse

PROMPT = "Hello world, the quick brown fox"


def _zeroed_head(model_root, model_id: str, layer: int, head: int):
    """The model with head `head` of `layer` ablated by zeroing its output weights."""
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    config = model.config
    width = config.hidden_size // config.num_attention_heads
    with torch.no_grad():
        if model_id == "tiny-gpt2":
            model.transformer.h[layer].attn.c_proj.weight[width * head : width * (head + 1)] = 0
        else:
            weight = model.model.layers[layer].self_attn.o_proj.weight
            weight[:, width * head : width * (head + 1)] = 0
    return model


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-llama"])
def test_a_generation_with_an_ablated_head_is_the_changed_models(server, model_root, model_id):
    asked = {"model_id": model_id, "prompt": PROMPT, "max_new_tokens": 6, "temperature": 0}
    intervention = {"kind": "ablate_head", "layer": 1, "head": 1}
    got = server.post("/generate", **asked, details=True, interventions=[intervention])
    tokens = got["details"]["tokens"]
    model = _zeroed_head(model_root, model_id, 1, 1)
    ids = AutoTokenizer.from_pretrained(model_root / model_id)(PROMPT)["input_ids"]
    with torch.inference_mode():
        for token in tokens:
            logprobs = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            assert token["id"] == int(logprobs.argmax())
            assert token["logprob"] == pytest.approx(float(logprobs[token["id"]]), abs=3e-4)
            ids.append(token["id"])
    plain = server.post("/generate", **asked, details=True)["details"]["tokens"]
    assert [t["logprob"] for t in plain] != [t["logprob"] for t in tokens]


def test_inspect_shows_the_intervened_model(server, model_root):
    body = {"model_id": "tiny-llama", "prompt": PROMPT, "include": ["next_token"], "top_k": 5}
    intervention = {"kind": "ablate_head", "layer": 0, "head": 2}
    got = server.post("/inspect", **body, interventions=[intervention])["next_token"]
    model = _zeroed_head(model_root, "tiny-llama", 0, 2)
    ids = server.post("/tokenize", model_id="tiny-llama", prompt=PROMPT)["token_ids"]
    with torch.inference_mode():
        probs = model(torch.tensor([ids])).logits[0].float().softmax(-1)
    expected = probs.topk(5, dim=-1).values.numpy()
    np.testing.assert_allclose(tensors.decode(got["probs"]).astype(np.float32), expected, atol=2e-3)
    plain = server.post("/inspect", **body)["next_token"]
    assert not np.array_equal(tensors.decode(plain["probs"]), tensors.decode(got["probs"]))


def _stream_tokens(server, body) -> list[tuple[int, float]]:
    response = requests.post(server.url("/generate/stream"), json=body, timeout=120)
    assert response.status_code == 200, response.text
    events = [
        json.loads(e.data)
        for e in parse(response.text)
        if isinstance(e, SSEEvent) and e.event == "token"
    ]
    return [(e["id"], e["logprob"]) for e in events]


@pytest.mark.parametrize("seed", [None, 5])
def test_a_plain_stream_beside_intervened_ones_shares_their_passes_and_keeps_its_tokens(
    server, seed
):
    """The three streams decode as rows of the same steps (interventions are masked to
    their rows); the plain one makes the tokens it makes alone, its logprobs within the
    batching noise (bit for bit beside the same rows plain: tests/unit/engine)."""
    plain = {"model_id": "slow-gpt2", "prompt": PROMPT, "max_new_tokens": 24, "details": True}
    plain.update(temperature=0 if seed is None else 0.8, **({"seed": seed} if seed else {}))
    alone = _stream_tokens(server, plain)
    steer = {"kind": "steer", "layer": 1, "contrast": ["Love", "Hate"], "scale": 4.0}
    results: dict[str, list] = {}
    bodies = {
        "plain": plain,
        "steered": {**plain, "interventions": [steer]},
        "ablated": {**plain, "interventions": [{"kind": "ablate_mlp", "layer": 2}]},
    }
    threads = [
        threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, _stream_tokens(server, b)))
        for k, b in bodies.items()
    ]
    before = server.stats("slow-gpt2")["decode_steps"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    steps = server.stats("slow-gpt2")["decode_steps"] - before
    assert steps < 2 * 24  # 3 × 23 in groups of their own; about 23 when they share
    assert [t for t, _ in results["plain"]] == [t for t, _ in alone]
    np.testing.assert_allclose(
        [lp for _, lp in results["plain"]], [lp for _, lp in alone], atol=1e-5, rtol=0
    )
    assert results["steered"] != alone and results["ablated"] != alone


@pytest.mark.parametrize(
    ("intervention", "field"),
    [
        ({"kind": "ablate_head", "layer": 2, "head": 0}, "interventions.0.layer"),
        ({"kind": "ablate_head", "layer": 0, "head": 99}, "interventions.0.head"),
        ({"kind": "ablate_mlp", "layer": -1}, "interventions.0.layer"),
        ({"kind": "steer", "layer": 0, "vector": [0.5] * 3}, "interventions.0.vector"),
        ({"kind": "steer", "layer": 0}, "exactly one of `vector` and `contrast`"),
        ({"kind": "steer", "layer": 0, "contrast": ["only one"]}, "interventions.0.contrast"),
        (
            {"kind": "patch", "layer": 0, "source": "Hi", "positions": [1000]},
            "interventions.0.positions.0",
        ),
        (
            {"kind": "patch", "layer": 0, "source": "", "positions": [0]},
            "interventions.0.source",
        ),
        ({"kind": "steer", "layer": 0, "vector": [1e30] + [0.0] * 63}, "interventions.0.vector.0"),
        (
            {"kind": "steer", "layer": 0, "vector": [0.5] * 64, "scale": 1e5},
            "interventions.0.scale",
        ),
        ({"kind": "rotate", "layer": 0}, "interventions.0"),
        ({"kind": "ablate_mlp", "layer": 0, "extra": 1}, "interventions.0.extra"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate/stream", "/inspect"])
def test_a_bad_intervention_is_a_400_naming_the_field(server, intervention, field, path):
    before = server.stats("tiny-gpt2", default={"generated_tokens": 0})["generated_tokens"]
    body = {"model_id": "tiny-gpt2", "prompt": PROMPT, "interventions": [intervention]}
    response = requests.post(server.url(path), json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    after = server.stats("tiny-gpt2", default={"generated_tokens": 0})["generated_tokens"]
    assert after == before  # refused before any work


@pytest.mark.parametrize(
    ("intervention", "field"),
    [
        ({"kind": "steer", "layer": 0, "contrast": ["ABCABCABCABCA", "C"]}, "contrast.0"),
        ({"kind": "steer", "layer": 0, "contrast": ["C", "ABCABCABCABCA"]}, "contrast.1"),
        ({"kind": "patch", "layer": 0, "source": "A" * 22, "positions": [5]}, "source"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate/stream", "/inspect", "/v1/completions"])
def test_a_text_longer_than_the_context_is_a_400_naming_it(server, intervention, field, path):
    """nano-sort reads 12 tokens: a contrast text or patch source past that is refused as a
    prompt past it is, not run into the position table (an IndexError, a 500)."""
    body: dict = {"prompt": "CBABBC", "interventions": [intervention]}
    if path.startswith("/v1"):
        body.update(model="llmviz/nano-sort", max_tokens=4)
    else:
        body.update(model_id="llmviz/nano-sort", max_new_tokens=4)
    if path == "/inspect":
        del body["max_new_tokens"]
    response = requests.post(server.url(path), json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert message.startswith(f"interventions.0.{field}: ") and "context" in message


def test_v1_takes_interventions_as_an_extension(server, model_root):
    intervention = {"kind": "ablate_head", "layer": 1, "head": 1}
    asked = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    changed = server.post(
        "/v1/completions", **asked, logprobs=1, echo=True, interventions=[intervention]
    )
    native = server.post(
        "/generate",
        model_id="tiny-llama",
        prompt=PROMPT,
        max_new_tokens=4,
        temperature=0,
        details=True,
        interventions=[intervention],
    )
    logprobs = changed["choices"][0]["logprobs"]
    generated = logprobs["token_logprobs"][-4:]
    assert generated == pytest.approx([t["logprob"] for t in native["details"]["tokens"]], abs=1e-5)
    # The echoed prompt is scored by the intervened model too.
    model = _zeroed_head(model_root, "tiny-llama", 1, 1)
    ids = server.post("/tokenize", model_id="tiny-llama", prompt=PROMPT)["token_ids"]
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    prompt_logprobs = logprobs["token_logprobs"][1 : len(ids)]
    assert prompt_logprobs == pytest.approx(
        [float(expected[i, ids[i + 1]]) for i in range(len(ids) - 1)], abs=3e-4
    )
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    bad = requests.post(
        server.url("/v1/chat/completions"),
        json={**chat, "interventions": [{"kind": "ablate_head", "layer": 0, "head": 50}]},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "interventions.0.head"


def test_live_attention_rows_come_from_the_intervened_model(server):
    """Watching attention (eager passes) with an intervention: the rows are the changed
    model's, as an /inspect of the same sequence with the same intervention shows them."""
    intervention = [{"kind": "ablate_head", "layer": 0, "head": 1}]
    asked = {"model_id": "tiny-gpt2", "prompt": PROMPT, "max_new_tokens": 3, "temperature": 0}
    got = server.post(
        "/generate",
        **asked,
        details=True,
        attention="last_row",
        layers=[1],
        interventions=intervention,
    )
    tokens = got["details"]["tokens"]
    ids = server.post("/tokenize", model_id="tiny-gpt2", prompt=PROMPT)["token_ids"]
    sequence = ids + [t["id"] for t in tokens]

    def layer_one(**extra) -> np.ndarray:
        inspected = server.post(
            "/inspect",
            model_id="tiny-gpt2",
            token_ids=sequence,
            include=["attention"],
            layers=[1],
            attention={"format": "dense"},
            **extra,
        )
        return tensors.decode(inspected["attention"]["weights"]).astype(np.float32)[0]

    weights = layer_one(interventions=intervention)
    for i, token in enumerate(tokens):
        row = tensors.decode(token["attention"]).astype(np.float32)[0]  # [heads, keys]
        position = len(ids) + i - 1
        np.testing.assert_allclose(row, weights[:, position, : position + 1], atol=2e-3)
    assert not np.allclose(layer_one(), weights, atol=1e-3)
