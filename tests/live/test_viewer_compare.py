"""The viewer's Intervene and compare panel, in Chromium against the real gunicorn server:
the original and the intervened generation side by side with the same seed, where they
first diverge, what the interventions change in one layer's attention and logit lens
(against the test's own /inspect calls), the comparison saved as one JSON file and opened
again from it without a single generation, and saved as one page that shows it from
file:// with no server. `LLMVIZ_UPDATE_SCREENSHOT=1` also writes the README's
docs/compare.png (the Shakespeare demo model steered)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from app.engine import tensors
from tests.support.server import REPO

pytestmark = pytest.mark.browser

SHAKESPEARE = "llmviz/shakespeare"
PANEL = "#intervene-panel"
VIEW = "[data-testid=compare-view]"
PROMPT = "ROMEO: But soft, what light"
STEER = {"kind": "steer", "layer": 3, "contrast": ["Love", "Hate"], "scale": 3.0}
INTERNALS = "[data-testid=internals]"
READOUT = "[data-testid=attention-delta]"


def _wait(page, expression: str) -> None:
    page.wait_for_function(expression, timeout=30_000)


def _wait_text(page, selector: str, start: str) -> None:
    _wait(
        page,
        f"document.querySelector({json.dumps(selector)}).textContent.startsWith({json.dumps(start)})",
    )


def _column(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{VIEW} tbody tr",
        f"rows => rows.map(r => r.cells[{index}].querySelector('.tok')?.dataset.text ?? '')",
    )


def _texts(server, **extra) -> list[str]:
    body = {"model_id": SHAKESPEARE, "prompt": PROMPT, "max_new_tokens": 24, "temperature": 0.8}
    answer = server.post("/generate", **body, seed=0, details=True, **extra)
    return [token["text"] for token in answer["details"]["tokens"]]


def _layer(server, ids: list[int], layer: int, **extra) -> dict:
    """The test's own reading of one layer: dense attention [H, T, T], lens top-5 [T, 5]."""
    answer = server.post(
        "/inspect",
        model_id=SHAKESPEARE,
        token_ids=ids,
        include=["logit_lens", "attention"],
        layers=[layer],
        top_k=5,
        attention={"format": "dense"},
        **extra,
    )
    return {
        "attention": tensors.decode(answer["attention"]["weights"])[0].astype(np.float64),
        "lens_ids": tensors.decode(answer["logit_lens"]["ids"])[0],
        "lens_probs": tensors.decode(answer["logit_lens"]["probs"])[0].astype(np.float64),
    }


def _largest_change(before: dict, after: dict, head: int) -> float:
    delta = after["attention"][head] - before["attention"][head]
    return float(delta.flat[np.argmax(np.abs(delta))])


def _compare(tab, server) -> None:
    """Steer the demo model in the viewer and Compare; wait for the runs and the internals."""
    url = f"/?model={SHAKESPEARE}&prompt=ROMEO%3A%20But%20soft%2C%20what%20light"
    tab.goto(server.url(url + "&temperature=0.8&max_new_tokens=24"))
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")
    form = f"{PANEL} .intervene-form"
    tab.select_option(f"{form} [name=kind]", "steer")
    tab.fill(f"{form} [name=layer]", "3")
    tab.fill(f"{form} [name=scale]", "3")
    tab.click("[data-testid=add-intervention]")
    assert "steer layer 3 by “Love” − “Hate” × 3" in tab.text_content("[data-testid=interventions]")
    assert tab.is_hidden(f"{INTERNALS} .internals-body")  # no empty maps or captions yet
    tab.click("[data-testid=compare]")
    _wait(tab, f"document.querySelector('{VIEW}').dataset.state === 'done'")
    _wait(tab, f"document.querySelector('{INTERNALS}').dataset.state === 'done'")


def test_compare_steering_the_demo_model_then_save_and_open_it(tab, server, tmp_path):
    _compare(tab, server)

    original, steered = _column(tab, 1), _column(tab, 2)
    assert original == _texts(server)  # seed 0 when the form has none, as the panel says
    assert steered == _texts(server, interventions=[STEER])
    first = next(i for i, (a, b) in enumerate(zip(original, steered, strict=False)) if a != b)
    assert f"first diverge at generated token {first}" in tab.text_content(
        f"{PANEL} .compare-status"
    )
    assert tab.get_attribute(f"{VIEW} tbody tr[data-index='{first}']", "class") == "diverge"

    # The internals: layer 3 (where the steering enters) on the original run's tokens, read
    # with and without it, as the test's own /inspect calls read them.
    prompt_ids = server.post("/tokenize", model_id=SHAKESPEARE, prompt=PROMPT)["token_ids"]
    generated = server.post(
        "/generate",
        model_id=SHAKESPEARE,
        prompt=PROMPT,
        max_new_tokens=24,
        temperature=0.8,
        seed=0,
        details=True,
    )["details"]["tokens"]
    ids = prompt_ids + [t["id"] for t in generated]
    plain, steered_layer = _layer(server, ids, 3), _layer(server, ids, 3, interventions=[STEER])
    assert "Layer 3 on the original run's" in tab.text_content(INTERNALS)
    readout = tab.eval_on_selector(READOUT, "e => ({...e.dataset})")
    assert readout["head"] == "0"
    largest = _largest_change(plain, steered_layer, 0)
    assert float(readout["delta"]) == pytest.approx(largest, abs=2e-5)
    assert abs(_largest_change(plain, steered_layer, 0)) > 1e-3  # steering moves attention here
    changed = tab.eval_on_selector_all(
        "[data-testid=lens-delta] tbody tr.changed",
        "rows => rows.map(r => Number(r.dataset.position))",
    )
    expected = np.flatnonzero(plain["lens_ids"][:, 0] != steered_layer["lens_ids"][:, 0]).tolist()
    assert changed == expected and changed  # the steering changes some top tokens of the lens
    tab.select_option(f"{INTERNALS} [name=head]", "2")
    assert float(tab.get_attribute(READOUT, "data-delta")) == pytest.approx(
        _largest_change(plain, steered_layer, 2), abs=2e-5
    )
    # Another layer: read again from the server.
    tab.select_option(f"{INTERNALS} [name=layer]", "5")
    _wait(tab, f"document.querySelector('{INTERNALS}').textContent.includes('Layer 5 on')")
    _wait(tab, f"document.querySelector('{INTERNALS}').dataset.state === 'done'")
    plain5, steered5 = _layer(server, ids, 5), _layer(server, ids, 5, interventions=[STEER])
    assert float(tab.get_attribute(READOUT, "data-delta")) == pytest.approx(
        _largest_change(plain5, steered5, 2), abs=2e-5
    )
    tab.select_option(f"{INTERNALS} [name=layer]", "3")
    _wait(tab, f"document.querySelector('{INTERNALS}').textContent.includes('Layer 3 on')")
    _wait(tab, f"document.querySelector('{INTERNALS}').dataset.state === 'done'")
    tab.select_option(f"{INTERNALS} [name=head]", "0")

    image = tab.locator(PANEL).screenshot()
    (REPO / "tests" / "artifacts").mkdir(exist_ok=True)
    (REPO / "tests" / "artifacts" / "compare.png").write_bytes(image)
    if os.environ.get("LLMVIZ_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs" / "compare.png").write_bytes(image)

    with tab.expect_download() as download:
        tab.click("[data-testid=save-run]")
    saved = tmp_path / "run.json"
    download.value.save_as(saved)
    run = json.loads(saved.read_text())
    assert run["format"] == "llmviz-compare/1" and run["model"] == SHAKESPEARE
    assert run["prompt"] == PROMPT and run["interventions"] == [STEER]
    assert [t["text"] for t in run["intervened"]] == steered
    assert all("logprob" in t and "id" in t for t in run["original"])
    assert all(len(t["top_logprobs"]) == 5 for t in run["original"] + run["intervened"])
    internals = run["internals"]
    assert internals["layer"] == 3 and internals["token_ids"] == ids
    for side, reading in (("original", plain), ("intervened", steered_layer)):
        saved_attention = internals[side]["attention"]  # [H][q][0..q]
        for head in range(len(saved_attention)):
            for q, row in enumerate(saved_attention[head]):
                assert row == pytest.approx(reading["attention"][head, q, : q + 1], abs=1e-5)
        assert internals[side]["lens"]["ids"] == reading["lens_ids"].tolist()

    # Opened again in a fresh page: drawn from the file alone, nothing generated.
    fresh = tab.context.new_page()
    asked: list[str] = []
    fresh.on("request", lambda r: asked.append(r.url))
    fresh.goto(server.url("/"))
    fresh.set_input_files("[data-testid=open-run]", str(saved))
    _wait(fresh, f"document.querySelector('{VIEW}').dataset.state === 'done'")
    assert _column(fresh, 2) == steered and _column(fresh, 1) == original
    assert "Opened run.json" in fresh.text_content(f"{PANEL} .compare-status")
    assert float(fresh.get_attribute(READOUT, "data-delta")) == pytest.approx(
        _largest_change(plain, steered_layer, 0), abs=2e-5
    )
    assert not [u for u in asked if "/generate/stream" in u or u.endswith("/generate")]
    assert tab.errors == []


def test_a_comparison_saved_as_a_page_shows_from_file_with_no_server(tab, server, tmp_path):
    _compare(tab, server)
    original, steered = _column(tab, 1), _column(tab, 2)
    delta = tab.get_attribute(READOUT, "data-delta")
    with tab.expect_download() as download:
        tab.click("[data-testid=save-page]")
    page_file = tmp_path / "comparison.html"
    download.value.save_as(page_file)
    with tab.expect_download() as download:
        tab.click("[data-testid=save-run]")
    json_file = tmp_path / "run.json"
    download.value.save_as(json_file)

    # From disk, in a context that may reach nothing but files: every request it makes is
    # recorded, and any other request would fail.
    offline = tab.context.browser.new_context(viewport={"width": 1200, "height": 900})
    offline.route("http://**/*", lambda route: route.abort())
    page = offline.new_page()
    errors: list[str] = []
    asked: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("request", lambda r: asked.append(r.url))
    page.goto(page_file.as_uri())
    _wait(page, f"document.querySelector('{VIEW}').dataset.state === 'done'")
    assert _column(page, 1) == original and _column(page, 2) == steered
    assert "first diverge at generated token" in page.text_content(".compare-status")
    assert "by “Love” − “Hate” × 3" in page.text_content("[data-testid=interventions]")
    assert page.get_attribute(READOUT, "data-delta") == delta
    assert page.is_disabled(f"{INTERNALS} [name=layer]")  # the saved layer only
    layers = page.eval_on_selector_all(
        f"{INTERNALS} [name=layer] option", "o => o.map(x => x.value)"
    )
    assert layers == ["3"]
    about = page.text_content("[data-testid=saved-about]")
    assert "max_new_tokens 24, temperature 0.8" in about and about.endswith(", seed 0.")
    page.select_option(f"{INTERNALS} [name=head]", "1")
    assert page.get_attribute(READOUT, "data-head") == "1"

    # The page opens the JSON file too, and says what is wrong with a file that is neither.
    page.set_input_files("[data-testid=open-run]", str(json_file))
    _wait_text(page, "[data-testid=saved-about]", "Opened run.json")
    assert _column(page, 2) == steered
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    page.set_input_files("[data-testid=open-run]", str(bad))
    _wait_text(page, ".compare-status", "Cannot open bad.json")
    assert all(url.startswith("file:") for url in asked), asked
    assert errors == []
    offline.close()

    # And the viewer opens the saved page as it opens the JSON.
    tab.reload()
    tab.set_input_files("[data-testid=open-run]", str(page_file))
    _wait_text(tab, f"{PANEL} .compare-status", "Opened comparison.html")
    assert _column(tab, 2) == steered
    assert tab.errors == []
