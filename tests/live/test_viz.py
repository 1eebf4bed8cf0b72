"""Live attention while streaming, and inspections beside generations, on the real server."""

from __future__ import annotations

import json
import threading

import numpy as np
import requests

from app.engine import tensors
from tests.support.sse_client import parse

EVERYTHING = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


def test_streamed_attention_rows_match_a_full_inspection(server):
    body = {"model_id": "tiny-llama", "prompt": "Attention please", "max_new_tokens": 6}
    body.update(temperature=0, ignore_eos=True, details=True, attention="last_row", heads=[0, 3])
    events = parse(requests.post(server.url("/generate/stream"), json=body, timeout=60).text)
    tokens = [json.loads(e.data) for e in events if getattr(e, "event", "") == "token"]
    prompt_ids = requests.post(server.url("/tokenize"), json=body, timeout=30).json()["token_ids"]
    sequence = prompt_ids + [t["id"] for t in tokens]
    full = requests.post(
        server.url("/inspect"),
        timeout=60,
        json={
            "model_id": "tiny-llama",
            "token_ids": sequence,
            "include": ["attention"],
            "attention": {"format": "dense", "heads": [0, 3]},
        },
    ).json()
    dense = tensors.decode(full["attention"]["weights"]).astype(np.float32)
    for i, token in enumerate(tokens):
        row = tensors.decode(token["attention"]).astype(np.float32)  # [layers, heads, keys]
        position = len(prompt_ids) + i - 1  # the position that predicted token i
        assert row.shape == (2, 2, position + 1)
        np.testing.assert_allclose(row, dense[:, :, position, : position + 1], atol=2e-3)


def test_inspection_and_generation_do_not_interfere(server):
    body = {"model_id": "slow-gpt2", "prompt": "Side by side", "max_new_tokens": 300}
    body.update(temperature=0, ignore_eos=True)
    expected = server.generate(**body)
    inspect_body = {"model_id": "slow-gpt2", "prompt": "Inspect me " * 20, "include": EVERYTHING}
    alone = requests.post(server.url("/inspect"), json=inspect_body, timeout=120).json()
    results = {}
    stream = threading.Thread(
        target=lambda: results.update(
            text="".join(
                e.data
                for e in parse(
                    requests.post(server.url("/generate/stream"), json=body, timeout=120).text
                )
            )
        )
    )
    stream.start()
    during = [
        requests.post(server.url("/inspect"), json=inspect_body, timeout=120).json()
        for _ in range(3)
    ]
    stream.join(timeout=120)
    assert results["text"] == expected
    assert all(d == alone for d in during)
