"""A model larger than its memory budget: GPT-2 small's shape split by accelerate's device map
(LLMVIZ_DEVICE_MAP=auto, LLMVIZ_MAX_MEMORY={"cpu": "150MB"}), served by the real gunicorn
server, gives what the same model loaded whole gives, and holds less memory.

The two servers run one after the other (each test module's server is alone on the machine
while it is measured); every answer is kept and compared at the end.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from safetensors import safe_open

from app.engine import tensors
from tests.support.server import LiveServer
from tests.support.sse_client import SSEEvent, parse
from tests.support.tiny_models import save_gpt2_small_shape

MODEL = "gpt2-small-shape"
PROMPT = "The quick brown fox jumps over"
# 150 MB holds not even the tied embedding (154 MB): everything is read from disk for each
# pass. 300 MB keeps the embedding and the first blocks in memory, the rest on disk.
SPLITS = {
    "disk": {"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cpu": "150MB"}'},
    "cpu+disk": {"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cpu": "300MB"}'},
}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpt2-small")
    save_gpt2_small_shape(root / MODEL)
    return root


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def _stream_tokens(live: LiveServer, **body: Any) -> list[dict[str, Any]]:
    response = requests.post(
        live.url("/generate/stream"), json={"model_id": MODEL, **body}, timeout=300
    )
    assert response.status_code == 200, response.text
    events = parse(response.text)
    return [json.loads(e.data) for e in events if isinstance(e, SSEEvent) and e.event == "token"]


def _answers(live: LiveServer) -> dict[str, Any]:
    """Everything compared between the two loads, and the worker's memory after it."""
    got: dict[str, Any] = {}
    got["text"] = live.generate(model_id=MODEL, prompt=PROMPT, max_new_tokens=12, temperature=0)
    got["stream"] = live.stream_text(
        model_id=MODEL, prompt=PROMPT, max_new_tokens=12, temperature=0
    )
    # Two streams at once share the worker's batch.
    batched: dict[int, str] = {}

    def run(i: int) -> None:
        batched[i] = live.stream_text(
            model_id=MODEL, prompt=f"Row {i} says", max_new_tokens=8, temperature=0
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    got["batched"] = batched
    got["details"] = _stream_tokens(
        live,
        prompt=PROMPT,
        max_new_tokens=4,
        temperature=0,
        details=True,
        top_logprobs=3,
        attention="last_row",
        layers=[0, 11],
    )
    echo = live.post(
        "/v1/completions",
        model=MODEL,
        prompt=PROMPT,
        max_tokens=1,
        echo=True,
        logprobs=3,
        temperature=0,
    )
    got["echo"] = echo["choices"][0]["logprobs"]
    got["inspect"] = live.post(
        "/inspect",
        model_id=MODEL,
        prompt=PROMPT,
        include=["tokens", "next_token", "logit_lens", "attention", "resid_norms"],
        layers=[0, 5, 11],
        attention={"format": "dense"},
    )
    got["listed"] = live.stats(MODEL)
    got["rss"] = _rss_bytes(live.worker_pids()[0])
    return got


@pytest.fixture(scope="module")
def loads(small_root) -> dict[str, dict[str, Any]]:
    results = {}
    for name, env in (("whole", {}), *SPLITS.items()):
        with LiveServer({"LLMVIZ_MODEL_ROOT": str(small_root), **env}) as live:
            results[name] = _answers(live)
    return results


def _checkpoint_bytes(root: Path) -> int:
    with safe_open(root / MODEL / "model.safetensors", "pt") as checkpoint:
        shapes = [checkpoint.get_slice(name).get_shape() for name in checkpoint.keys()]
    return 4 * sum(int(np.prod(shape)) for shape in shapes)  # float32


@pytest.mark.parametrize("kind", SPLITS)
def test_the_model_is_split_and_listed_with_where_it_lives(loads, small_root, kind):
    whole, split = loads["whole"]["listed"], loads[kind]["listed"]
    assert whole["device_map"] is None
    placement = split["device_map"]
    assert placement is not None, split
    devices = set(placement["map"].values())
    assert devices == ({"disk"} if kind == "disk" else {"cpu", "disk"}), placement["map"]
    assert placement["offloaded"], placement
    # Every byte of the model is somewhere: the devices add up to the checkpoint's tensors.
    assert sum(placement["bytes"].values()) == _checkpoint_bytes(small_root)
    assert split["memory_bytes"] == placement["bytes"].get("cpu", 0)
    assert split["packed_layers"] == 0 and whole["packed_layers"] > 0


@pytest.mark.parametrize("kind", SPLITS)
def test_generation_streams_and_batches_give_the_same_tokens(loads, kind):
    whole, split = loads["whole"], loads[kind]
    assert split["text"] == whole["text"]
    assert split["stream"] == whole["stream"] == whole["text"]
    assert split["batched"] == whole["batched"] and len(whole["batched"]) == 2


@pytest.mark.parametrize("kind", SPLITS)
def test_details_logprobs_and_live_attention_match(loads, kind):
    whole, split = loads["whole"]["details"], loads[kind]["details"]
    assert [t["id"] for t in split] == [t["id"] for t in whole] and len(whole) == 4
    for a, b in zip(whole, split, strict=True):
        assert b["logprob"] == pytest.approx(a["logprob"], abs=1e-4)
        assert [x["id"] for x in b["top_logprobs"]] == [x["id"] for x in a["top_logprobs"]]
        rows_a, rows_b = tensors.decode(a["attention"]), tensors.decode(b["attention"])
        assert rows_a.shape == rows_b.shape and rows_a.shape[0] == 2
        np.testing.assert_allclose(rows_b, rows_a, atol=2e-3)


@pytest.mark.parametrize("kind", SPLITS)
def test_v1_echo_logprobs_match(loads, kind):
    whole, split = loads["whole"]["echo"], loads[kind]["echo"]
    assert split["tokens"] == whole["tokens"]
    assert whole["token_logprobs"][1] is not None
    np.testing.assert_allclose(
        np.array(split["token_logprobs"][1:]), np.array(whole["token_logprobs"][1:]), atol=1e-4
    )


@pytest.mark.parametrize("kind", SPLITS)
def test_inspect_attention_lens_and_norms_match(loads, kind):
    whole, split = loads["whole"]["inspect"], loads[kind]["inspect"]
    assert split["token_ids"] == whole["token_ids"] and split["layers"] == [0, 5, 11]
    attention_w = tensors.decode(whole["attention"]["weights"]).astype(np.float32)
    attention_s = tensors.decode(split["attention"]["weights"]).astype(np.float32)
    assert attention_w.shape == attention_s.shape and attention_w.shape[1] == 12
    np.testing.assert_allclose(attention_s, attention_w, atol=2e-3)
    lens_w, lens_s = whole["logit_lens"], split["logit_lens"]
    np.testing.assert_array_equal(
        tensors.decode(lens_s["next_token_rank"]), tensors.decode(lens_w["next_token_rank"])
    )
    np.testing.assert_allclose(
        tensors.decode(lens_s["probs"]).astype(np.float32),
        tensors.decode(lens_w["probs"]).astype(np.float32),
        atol=2e-3,
    )
    for key in ("input", "output"):
        np.testing.assert_allclose(
            tensors.decode(split["resid_norms"][key]),
            tensors.decode(whole["resid_norms"][key]),
            rtol=1e-4,
        )


@pytest.mark.parametrize("kind", SPLITS)
def test_the_worker_holds_less_memory_by_at_least_the_offloaded_weights(loads, kind):
    whole, split = loads["whole"], loads[kind]
    placement = split["listed"]["device_map"]
    on_disk = placement["bytes"].get("disk", 0)
    assert on_disk > 200e6
    saved = whole["rss"] - split["rss"]
    assert saved >= on_disk, (whole["rss"], split["rss"], on_disk)
