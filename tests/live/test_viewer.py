"""The built-in viewer at `/`, in Chromium against the real gunicorn server and the demo models.

The whole flow of issue 13 (pick the model, type, generate, stop, attention, logit lens,
continue from an alternative, no console errors), the API-key field and the other error
notices, the client module from another origin, and the page's size and speed. Screenshots
of each panel go to tests/artifacts/ (git-ignored); `LLMVIZ_UPDATE_SCREENSHOT=1` also writes
the README's docs/viewer.png.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import requests

from app.engine import tensors
from app.models.resolution import DEMO_ROOT
from tests.support.server import REPO, wait_for
from tests.support.sse_client import SSEEvent, parse

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "tests" / "artifacts"
NANO = "llmviz/nano-sort"
SHAKESPEARE = "llmviz/shakespeare"
HAS_SHAKESPEARE = (DEMO_ROOT / "shakespeare" / "config.json").is_file()
NO_SHAKESPEARE = (
    "demo_models/shakespeare/ is not there (yet): its part of the viewer test is skipped"
)
# A model whose generations last long enough to watch and stop: the Shakespeare demo when it
# is there, else the tests' random slow-gpt2 (nano-sort stops after 6 tokens, in milliseconds).
LONG = SHAKESPEARE if HAS_SHAKESPEARE else "slow-gpt2"

MODEL, PROMPT, TOKENS = "[data-testid=model]", "[data-testid=prompt]", "[data-testid=tokens]"
GENERATE, STOP, OUTPUT = "[data-testid=generate]", "[data-testid=stop]", "[data-testid=output]"
ATTENTION, LENS, NORMS = "[data-testid=attention]", "[data-testid=lens]", "[data-testid=norms]"
ERROR = "[data-testid=error]"
PANELS = ["model", "prompt", "generate", "attention", "lens", "norms"]

# Samples, once per animation frame, what the page shows: the output's length and the
# attention heatmap's rows. Frames in which these changed are separate paint updates.
SAMPLE_FRAMES = """() => {
  const output = document.querySelector("[data-testid=output]");
  const heatmap = document.querySelector("[data-testid=attention]");
  const frames = [];
  let sampling = true;
  const sample = () => {
    frames.push([output.textContent.length, heatmap.dataset.source, Number(heatmap.dataset.size)]);
    if (sampling) requestAnimationFrame(sample);
  };
  requestAnimationFrame(sample);
  window.stopSampling = () => { sampling = false; return frames; };
}"""


def test_the_whole_flow_with_nano_sort(tab, server):
    # 1. load /, 2. pick the model
    tab.goto(server.url("/"))
    tab.wait_for_selector(f"{MODEL} option[value='{NANO}']", state="attached")
    tab.select_option(MODEL, NANO)
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")
    assert "3 query, 3 key/value" in tab.text_content(".arch")
    tab.fill("[name=temperature]", "0")

    # 3. type a prompt: the chips are /tokenize's answer
    tab.locator(PROMPT).press_sequentially("CBABBC", delay=30)
    expected = server.post("/tokenize", model_id=NANO, prompt="CBABBC")
    _wait(tab, f"document.querySelectorAll('{TOKENS} > *').length === {expected['count']}")
    assert _chips(tab) == list(zip(expected["token_ids"], expected["tokens"], strict=True))

    # 4. Generate: the text is the stream's (its paint updates: the next test, on a model
    # whose 6 tokens do not all arrive within one frame)
    tab.click(GENERATE)
    _wait(tab, f"document.querySelector('{OUTPUT}').dataset.state === 'done'")
    body = {"model_id": NANO, "prompt": "CBABBC", "max_new_tokens": 6, "temperature": 0}
    assert tab.text_content(OUTPUT) == _streamed_text(server, body) == "ABBBCC"
    assert "limited to 6 by the context" in tab.text_content(".gen-status")

    # 6. the heatmap of one layer and head is /inspect's, and the lens has a row per layer
    tab.select_option(".layer", "1")
    tab.select_option(".head", "2")
    ready = "d.source === 'inspect' && d.size === '12' && d.layer === '1' && d.head === '2'"
    _wait(tab, f"(d => {ready})(document.querySelector('{ATTENTION}').dataset)")
    shown = tab.eval_on_selector(ATTENTION, "c => ({...c.matrix, values: [...c.matrix.values]})")
    generated = server.post("/tokenize", model_id=NANO, prompt="ABBBCC")["token_ids"]
    assert shown["ids"] == expected["token_ids"] + generated
    inspected = server.post(
        "/inspect",
        model_id=NANO,
        token_ids=shown["ids"],
        include=["attention"],
        layers=[1],
        attention={"format": "dense"},
    )
    weights = tensors.decode(inspected["attention"]["weights"])[0, 2].astype(np.float32)
    np.testing.assert_array_equal(np.array(shown["values"], np.float32).reshape(12, 12), weights)
    _wait(tab, f"document.querySelector('{LENS}').dataset.state === 'ready'")
    assert tab.locator(f"{LENS} tr[data-layer]").count() == 3
    assert tab.locator(f"{NORMS} [data-layer]").count() == 3
    _screenshots(tab, "nano-sort")
    if not HAS_SHAKESPEARE:
        _page_screenshot(tab)
    # ... and the heatmap's cells can be read from the keyboard
    tab.focus(ATTENTION)
    tab.keyboard.press("ArrowRight")  # from the last row's first key to its second
    assert tab.text_content(".readout").endswith(f'key 1 "B": {weights[11, 1]:.4f}')

    # 7. the alternatives open from the keyboard too; clicking one continues from it: the
    # prompt becomes the text up to that token, plus the choice
    tab.focus(f"{OUTPUT} [data-index='0']")
    tab.keyboard.press("ArrowRight")
    tab.keyboard.press("Enter")
    assert tab.evaluate("document.activeElement.closest('.alternatives') !== null")
    assert "Token 1: B" in tab.text_content(".alternatives")
    tab.keyboard.press("Escape")
    assert tab.is_hidden(".alternatives")
    tab.click(f"{OUTPUT} [data-index='2']")
    tab.click(".alternatives button[data-id='2']")  # "C" instead of "B"
    _wait(tab, f"document.querySelector('{PROMPT}').value === 'CBABBCABC'")
    second = "(o => o.dataset.run === '2' && o.dataset.state === 'done')"
    _wait(tab, f"{second}(document.querySelector('{OUTPUT}'))")
    body.update(prompt="CBABBCABC", max_new_tokens=3)  # what the context leaves
    assert tab.text_content(OUTPUT) == _streamed_text(server, body)
    assert "prompt=CBABBCABC" in tab.url and "model=llmviz%2Fnano-sort" in tab.url

    # 8. no console errors
    assert tab.errors == []


def test_the_text_streams_in_paint_by_paint_and_stop_ends_the_job(tab, server):
    server.post("/generate", model_id=LONG, prompt="x", max_new_tokens=1)  # loaded: stats exist
    tab.goto(server.url(f"/?model={LONG}&prompt=Hello%20world&temperature=0&max_new_tokens=48"))
    _wait(tab, f"document.querySelector('{ATTENTION}').dataset.source === 'inspect'")
    tab.evaluate(SAMPLE_FRAMES)
    tab.click(GENERATE)
    _wait(tab, f"document.querySelector('{OUTPUT}').dataset.state === 'done'")
    frames = tab.evaluate("window.stopSampling()")
    body = {"model_id": LONG, "prompt": "Hello world", "max_new_tokens": 48, "temperature": 0}
    text = _streamed_text(server, body)
    assert tab.text_content(OUTPUT) == text
    painted = sorted({length for length, _, _ in frames if length > 0})
    assert len(painted) >= 3 and painted[-1] == len(text), f"paint updates: {painted}"
    # Live attention: the heatmap grew by rows as tokens arrived, before /inspect's came
    live = sorted({size for _, source, size in frames if source == "live"})
    assert len(live) >= 3, f"heatmap sizes while streaming: {live}"

    # 5. Stop mid-stream: the page aborts its fetch and the server's job ends
    tab.fill("[name=max_new_tokens]", "2000")  # the page keeps to the context length
    room = min(2000, _context(server, LONG) - server.post("/tokenize", **body)["count"])
    before = server.stats(LONG)["generated_tokens"]
    tab.click(GENERATE)
    _wait(tab, f"document.querySelectorAll('{OUTPUT} .tok').length >= 3")
    tab.click(STOP)
    _wait(tab, f"document.querySelector('{OUTPUT}').dataset.state === 'stopped'")
    wait_for(lambda: server.stats(LONG)["active"] == 0, timeout=10, message="the job to end")
    made = server.stats(LONG)["generated_tokens"] - before
    assert made < min(100, room // 2), f"the server made {made} of {room} tokens after a Stop"
    assert tab.errors == []


def test_an_api_key_field_on_401_and_the_other_notices(tab, start_server):
    keyed = start_server(
        LLMVIZ_API_KEYS="sesame",
        LLMVIZ_DEFAULT_MODEL=NANO,
        LLMVIZ_MAX_INSPECT_TOKENS="8",
    )
    assert tab.goto(keyed.url("/")).status == 200  # the page itself needs no key
    _wait(tab, f"document.querySelector('{ERROR}').dataset.status === '401'")
    assert tab.is_visible(".key-form")

    tab.fill(".key-form input", "wrong")
    tab.click(".key-form button")
    _wait(tab, f"document.querySelector('{ERROR} .notice-text').textContent.includes('not valid')")
    tab.fill(".key-form input", "sesame")
    tab.click(".key-form button")
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")
    assert tab.is_hidden(ERROR)
    assert tab.evaluate("localStorage.getItem('llmviz.apiKey')") == "sesame"

    # 413: a prompt longer than /inspect takes here
    tab.fill(PROMPT, "ABCABCABCA")
    _wait(tab, f"document.querySelector('{ERROR}').dataset.status === '413'")
    assert "too long for this view" in tab.text_content(ERROR)

    # 503: says when to retry, from Retry-After (a real queue-full answer, replayed)
    busy = {"error": "too many requests are waiting for this model", "code": "overloaded"}
    tab.route(
        "**/generate/stream",
        lambda route: route.fulfill(status=503, headers={"Retry-After": "7"}, json=busy),
    )
    tab.fill(PROMPT, "CBA")
    _wait(tab, f"document.querySelectorAll('{TOKENS} > *').length === 3")
    tab.click(GENERATE)
    _wait(tab, f"document.querySelector('{ERROR}').dataset.status === '503'")
    assert "Retry in" in tab.text_content(ERROR) and tab.is_disabled(f"{ERROR} .retry")

    # The key is remembered: a reload goes straight to the model and the prompt
    tab.unroute("**/generate/stream")
    tab.reload()
    _wait(tab, f"document.querySelectorAll('{TOKENS} > *').length === 3")
    assert tab.input_value(PROMPT) == "CBA" and tab.is_hidden(ERROR)
    failed = [e for e in tab.errors if not any(f"status of {s}" in e for s in (401, 413, 503))]
    assert failed == []


def test_the_client_module_from_another_origin(tab, server, page_origin):
    tab.goto(page_origin + "/viewer_client.html")
    module = server.url("/viewer/client.js")
    # The SSE standard: CR, LF and CRLF (even split across pieces), comments, named events,
    # multi-line data, a BOM, an event that only a blank line completes.
    pieces = ["\ufeffdata: a\r", "\ndata:  b\n\n: ping\n", "event: token\ndata: {}\r\rdata", ": c"]
    parsed = tab.evaluate(
        """async ([module, pieces]) => {
          const { EventStreamParser } = await import(module);
          const parser = new EventStreamParser();
          const events = [...pieces.flatMap((p) => parser.push(p)), ...parser.end()];
          return events.map((e) => [e.type, e.data]);
        }""",
        [module, pieces],
    )
    assert parsed == [["message", "a\n b"], ["token", "{}"]]
    assert parsed == [
        [e.event, e.data] for e in parse("".join(pieces)[1:]) if isinstance(e, SSEEvent)
    ]

    # float16 by the standard's bit patterns: subnormals, infinities, NaN, signed zero
    values = np.array([0, -0.0, 1, -2.5, 65504, 6e-8, 1e-5, np.inf, -np.inf, np.nan], np.float16)
    encoded = tensors.encode(values, "float16")
    decoded = tab.evaluate(
        """async ([module, t]) => {
          const { decodeTensor } = await import(module);
          const named = (v) => (Number.isNaN(v) ? "nan" : Object.is(v, -0) ? "-0" : v);
          return Array.from(decodeTensor(t).values, named);
        }""",
        [module, encoded],
    )
    assert decoded[:2] == [0, "-0"] and decoded[-1] == "nan"
    assert decoded[2:-1] == values[2:-1].astype(np.float32).tolist()

    # A stream with details through the client: its deltas join to /generate's text
    body = {"model_id": NANO, "prompt": "CCBA", "max_new_tokens": 4, "temperature": 0}
    events = tab.evaluate(
        """async ([module, body]) => {
          const { LlmvizClient } = await import(module);
          const events = [];
          for await (const e of new LlmvizClient().stream(body)) events.push(e);
          return events;
        }""",
        [module, {**body, "details": True, "return_full_text": False}],
    )
    assert [e["type"] for e in events] == ["token"] * 4 + ["done"]
    joined = "".join(e["token"]["delta"] for e in events[:-1]) + events[-1]["done"]["delta"]
    assert joined == server.post("/generate", **body, return_full_text=False)["text"]
    assert tab.errors == []


@pytest.mark.skipif(not HAS_SHAKESPEARE, reason=NO_SHAKESPEARE)
def test_shakespeare_with_gpt2_tokens(tab, server):
    prompt = "ROMEO:\nBut soft, what light"
    tab.goto(server.url(f"/?model={SHAKESPEARE}&temperature=0.8&seed=7&max_new_tokens=40"))
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")
    tab.locator(PROMPT).press_sequentially(prompt, delay=10)
    expected = server.post("/tokenize", model_id=SHAKESPEARE, prompt=prompt)
    _wait(tab, f"document.querySelectorAll('{TOKENS} > *').length === {expected['count']}")
    assert _chips(tab) == list(zip(expected["token_ids"], expected["tokens"], strict=True))
    assert "·soft" in tab.text_content(TOKENS) and "↵" in tab.text_content(TOKENS)
    tab.click(GENERATE)
    _wait(tab, f"document.querySelector('{OUTPUT}').dataset.state === 'done'")
    body = {"model_id": SHAKESPEARE, "prompt": prompt, "max_new_tokens": 40}
    body.update(temperature=0.8, seed=7, return_full_text=False)
    assert tab.text_content(OUTPUT) == server.post("/generate", **body)["text"]
    _wait(tab, f"document.querySelector('{LENS}').dataset.state === 'ready'")
    _wait(tab, f"document.querySelector('{ATTENTION}').dataset.source === 'inspect'")
    layers = server.post("/config", model_id=SHAKESPEARE)["num_hidden_layers"]
    assert tab.locator(f"{LENS} tr[data-layer]").count() == layers
    assert tab.errors == []
    _screenshots(tab, "shakespeare")
    _page_screenshot(tab)


def test_size_and_speed(browser, server):
    """Transfer size and time to interactive of a cold load, and a 512-token heatmap."""
    figures = {}
    loads = []
    for _ in range(3):  # cold each time: a new context has an empty cache
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(server.url(f"/?model={NANO}"))
        _wait(page, "performance.getEntriesByName('viewer:interactive').length > 0")
        loads.append(page.evaluate(MEASURE_LOAD))
        context.close()
    figures["page_bytes"] = loads[-1]["page_bytes"]
    figures["api_bytes_at_load"] = loads[-1]["api_bytes"]
    figures["requests"] = loads[-1]["requests"]
    for name in ("dom_content_loaded_ms", "interactive_ms"):
        figures[name] = statistics.median(load[name] for load in loads)
    assert figures["page_bytes"] < 500_000
    assert figures["interactive_ms"] < 1000

    model = SHAKESPEARE if HAS_SHAKESPEARE and _context(server, SHAKESPEARE) >= 512 else "tiny-gpt2"
    prompt = _prompt_of_length(server, model, 512)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(server.url(f"/?model={model}&prompt=" + requests.utils.quote(prompt)))
    _wait(page, f"document.querySelector('{ATTENTION}').dataset.size === '512'", timeout=60_000)
    _wait(page, f"document.querySelector('{ATTENTION}').dataset.source === 'inspect'")
    render, draw = page.evaluate(
        "['attention:render', 'attention:draw'].map(n => performance.getEntriesByName(n).at(-1))"
    )
    figures["heatmap_512_model"] = model
    figures["heatmap_512_render_ms"] = render["duration"]  # decode, rows, draw
    figures["heatmap_512_draw_ms"] = draw["duration"]
    figures["heatmap_512_shown_after_load_ms"] = render["startTime"] + render["duration"]
    page.locator("#attention-panel").screenshot(path=_artifact("viewer-attention-512.png"))
    context.close()
    _artifact("viewer-figures.json").write_text(json.dumps(figures, indent=2))
    print("viewer figures:", json.dumps(figures))
    assert figures["heatmap_512_render_ms"] < 500


# What a cold load cost: bytes over the wire for the page's own files and for its API
# calls, and the time from navigation to the page marking itself interactive.
MEASURE_LOAD = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  const own = resources.filter((r) => new URL(r.name).pathname.startsWith("/viewer/"));
  const api = resources.filter((r) => !own.includes(r));
  const sum = (list) => list.reduce((n, r) => n + r.transferSize, 0);
  return {
    page_bytes: nav.transferSize + sum(own),
    api_bytes: sum(api),
    requests: own.length + 1,
    dom_content_loaded_ms: nav.domContentLoadedEventEnd,
    interactive_ms: performance.getEntriesByName("viewer:interactive")[0].startTime,
  };
}"""


def _wait(page, expression: str, timeout: float = 20_000) -> None:
    page.wait_for_function(expression, timeout=timeout)


def _context(server, model_id: str) -> int:
    config = requests.get(server.url("/models/config"), params={"model_id": model_id}, timeout=30)
    return config.json()["context_length"]


def _chips(page) -> list[tuple[int, str]]:
    return [
        (int(chip["id"]), chip["text"])
        for chip in page.eval_on_selector_all(f"{TOKENS} > *", "cs => cs.map(c => c.dataset)")
    ]


def _streamed_text(server, body: dict) -> str:
    """The generated text of the same request, streamed with details: its deltas joined."""
    events = server.stream(**body, details=True, return_full_text=False)
    deltas = [json.loads(e.data)["delta"] for e in events if isinstance(e, SSEEvent)]
    return "".join(deltas)


def _prompt_of_length(server, model_id: str, count: int) -> str:
    """A text that `model_id` tokenizes into exactly `count` tokens."""
    text = "Whether 'tis nobler in the mind to suffer the slings and arrows. " * count
    offsets = server.post("/tokenize", model_id=model_id, prompt=text)["offsets"]
    for end in range(count, count + 8):  # a cut mid-word can merge two tokens into one
        candidate = text[: offsets[end - 1][1]]
        if server.post("/tokenize", model_id=model_id, prompt=candidate)["count"] == count:
            return candidate
    raise AssertionError(f"no prefix of the text has {count} tokens")


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def _screenshots(page, label: str) -> None:
    for panel in PANELS:
        page.locator(f"#{panel}-panel").screenshot(path=_artifact(f"viewer-{label}-{panel}.png"))


def _page_screenshot(page) -> None:
    """The whole page, for the README: written to docs/ only when asked for."""
    image = page.screenshot(full_page=True, path=_artifact("viewer.png"))
    if os.environ.get("LLMVIZ_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "viewer.png").write_bytes(image)
