"""Download and load progress of a hub model (issue 24, section 5), on the real server,
against a throttled stand-in for the hub (tests/support/hub_server.py) reached through
HF_ENDPOINT: huggingface_hub's real download code runs."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import quote

import pytest
import requests

from tests.support.hub_server import HubServer
from tests.support.tiny_models import save_gpt2

REPO = "tiny-org/gpt2-42mb"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def repo_folder(tmp_path_factory):
    """A 42 MB GPT-2: huggingface_hub reads a download 10 MiB at a time and reports each
    read, so a file must span several reads for its progress to show steps."""
    return save_gpt2(tmp_path_factory.mktemp("hub") / "gpt2-42mb", n_layer=3, n_embd=512, n_head=8)


def _progress_comments(lines: list[str]) -> list[dict]:
    return [
        json.loads(line[len(": progress ") :]) for line in lines if line.startswith(": progress ")
    ]


def _weights(snapshot: dict) -> dict:
    return next(f for f in snapshot["files"] if f["name"] == WEIGHTS)


def test_a_hub_model_shows_its_download_in_models_and_in_stream_pings(
    start_server, repo_folder, tmp_path
):
    size = (repo_folder / WEIGHTS).stat().st_size
    # About 4 s for the weights: 1 MiB every 0.1 s.
    with HubServer({REPO: repo_folder}, chunk=1 << 20, pause=0.1) as hub:
        live = start_server(
            HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path / "hub-cache")
        )
        lines: list[str] = []
        body = {"model_id": REPO, "prompt": "x", "max_new_tokens": 3, "ignore_eos": True}

        def read_stream() -> None:
            with requests.post(
                live.url("/generate/stream"), json=body, stream=True, timeout=120
            ) as r:
                assert r.status_code == 200
                lines.extend(r.iter_lines(decode_unicode=True))

        reader = threading.Thread(target=read_stream)
        reader.start()
        seen: list[dict] = []  # GET /models' loading_progress entries while it loads
        while reader.is_alive():
            listing = requests.get(live.url("/models"), timeout=5).json()
            seen += [p for p in listing["loading_progress"] if p["model_id"] == REPO]
            reader.join(0.2)
        assert requests.get(live.url("/models"), timeout=5).json()["loading_progress"] == []

    downloading = [p for p in seen if p["phase"] == "downloading" and _weights(p)["done_bytes"]]
    assert downloading, f"GET /models never showed the download: {seen}"
    partial = [p for p in downloading if _weights(p)["done_bytes"] < size]
    assert partial and all(_weights(p)["total_bytes"] == size for p in partial)
    assert all(p["total_bytes"] >= size for p in partial)

    pings = _progress_comments(lines)
    done = [_weights(p)["done_bytes"] for p in pings if p["phase"] == "downloading"]
    assert len(set(done)) >= 3 and done == sorted(done), done  # bytes growing, ping by ping
    assert any(0 < d < size for d in done)
    # The phases in order. (Whether a last comment catches the weights phase is a race: the
    # model may be ready within one 0.5 s tick of the download's end.)
    phases = [p["phase"] for p in pings]
    assert phases == sorted(phases, key=["starting", "downloading", "loading_weights"].index)
    # The stream itself is as before: its text, with no error (progress lines are comments).
    assert any(line.startswith("data:") for line in lines) and "event: error" not in lines
    assert all(line.startswith((": ", "data:", "event:", "id:")) or not line for line in lines)
    # The weights were fetched once, through the hub's resolve URL.
    fetched = [r for r in hub.requests if r.startswith("GET ") and r.endswith("/" + WEIGHTS)]
    assert len(fetched) == 1 and f"/{REPO}/resolve/" in fetched[0]


def test_an_openai_stream_waits_for_its_hub_model_behind_progress_comments(
    start_server, repo_folder, tmp_path
):
    """/v1 streams loaded the model before their headers: the client saw nothing until the
    whole download was done. Now they open at once and carry the load's progress."""
    size = (repo_folder / WEIGHTS).stat().st_size
    with HubServer({REPO: repo_folder}, chunk=1 << 20, pause=0.1) as hub:
        live = start_server(
            HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path / "hub-cache")
        )
        # (Chat streams take the same path; this model has no chat template.)
        body = {"model": REPO, "prompt": "x", "max_tokens": 3, "stream": True, "ignore_eos": True}
        started = time.monotonic()
        url = live.url("/v1/completions")
        with requests.post(url, json=body, stream=True, timeout=120) as r:
            headers_after = time.monotonic() - started
            status = r.status_code
            lines = list(r.iter_lines(decode_unicode=True))
        total = time.monotonic() - started
    if status != 200:
        pytest.fail(f"{status}: {lines[:3]}")
    assert headers_after < total / 2, (headers_after, total)  # open long before the load ends
    done = [
        _weights(p)["done_bytes"] for p in _progress_comments(lines) if p["phase"] == "downloading"
    ]
    assert len(set(done)) >= 3 and done == sorted(done) and any(0 < d < size for d in done)
    chunks = [line for line in lines if line.startswith("data: {")]
    assert chunks and [line for line in lines if line][-1] == "data: [DONE]"
    assert all(json.loads(c[6:])["model"] == REPO for c in chunks)


@pytest.mark.browser
def test_the_viewer_shows_a_progress_bar_while_a_hub_model_loads(
    start_server, repo_folder, tmp_path, browser
):
    """The page opens a hub model: its own /inspect waits for the load, and the bar shows the
    download; before and after, an idle page polls nothing."""
    # About 11 s for the weights (1 MiB every 0.25 s).
    with HubServer({REPO: repo_folder}, chunk=1 << 20, pause=0.25) as hub:
        live = start_server(
            HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path / "hub-cache")
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        polls: list[float] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        open_calls: set = set()
        page.on("request", lambda r: r.url.endswith("/models") and polls.append(time.monotonic()))
        page.on("request", lambda r: open_calls.add(r))
        page.on("requestfinished", lambda r: open_calls.discard(r))
        page.on("requestfailed", lambda r: open_calls.discard(r))
        try:
            page.goto(live.url("/"))  # the default model: nothing loads from the hub
            # Settled: the model and its views are shown, the load's bar is gone (the poll that
            # sees the load ended hides it), and no call of the page is open.
            page.wait_for_function(
                "!document.querySelector('[data-testid=generate]').disabled"
                " && document.querySelector('[data-testid=lens]')?.dataset.state === 'ready'"
                " && document.querySelector('[data-testid=load-progress]').hidden",
                timeout=30_000,
            )
            deadline = time.monotonic() + 30
            while open_calls and time.monotonic() < deadline:  # events arrive while it waits
                page.wait_for_timeout(100)
            assert not open_calls, [r.url for r in open_calls]
            page.wait_for_timeout(500)
            idle = len(polls)
            page.wait_for_timeout(3000)
            assert len(polls) == idle  # no polling while the page waits for nothing

            page.goto(live.url(f"/?model={quote(REPO)}&prompt=x"))
            bar = f"[data-testid=load-progress] [data-model='{REPO}']"
            page.wait_for_selector(f"{bar}[data-phase=downloading]", timeout=30_000)
            page.wait_for_function(
                f'(() => {{ const p = document.querySelector("{bar} progress");'
                " return p && p.value > 0 && p.value < 1; })()",
                timeout=15_000,
            )
            words = page.text_content(bar)
            assert words.startswith(f"Downloading {REPO}: ") and "model.safetensors" in words
            page.wait_for_selector("[data-testid=load-progress]", state="hidden", timeout=60_000)
            settled = len(polls)
            page.wait_for_timeout(3000)
            assert len(polls) <= settled + 1  # the load is over: the polling stops
            assert not errors
        finally:
            context.close()
