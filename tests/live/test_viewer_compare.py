"""The viewer's Intervene and compare panel, in Chromium against the real gunicorn server:
the original and the intervened generation side by side with the same seed, where they
first diverge, the comparison saved as one JSON file and opened again from it without a
single generation. `LLMVIZ_UPDATE_SCREENSHOT=1` also writes the README's docs/compare.png
(the Shakespeare demo model steered)."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.server import REPO

pytestmark = pytest.mark.browser

SHAKESPEARE = "llmviz/shakespeare"
PANEL = "#intervene-panel"
VIEW = "[data-testid=compare-view]"
PROMPT = "ROMEO: But soft, what light"
STEER = {"kind": "steer", "layer": 3, "contrast": ["Love", "Hate"], "scale": 3.0}


def _wait(page, expression: str) -> None:
    page.wait_for_function(expression, timeout=30_000)


def _column(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{VIEW} tbody tr",
        f"rows => rows.map(r => r.cells[{index}].querySelector('.tok')?.dataset.text ?? '')",
    )


def _texts(server, **extra) -> list[str]:
    body = {"model_id": SHAKESPEARE, "prompt": PROMPT, "max_new_tokens": 24, "temperature": 0.8}
    answer = server.post("/generate", **body, seed=0, details=True, **extra)
    return [token["text"] for token in answer["details"]["tokens"]]


def test_compare_steering_the_demo_model_then_save_and_open_it(tab, server, tmp_path):
    url = f"/?model={SHAKESPEARE}&prompt=ROMEO%3A%20But%20soft%2C%20what%20light"
    tab.goto(server.url(url + "&temperature=0.8&max_new_tokens=24"))
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")
    form = f"{PANEL} .intervene-form"
    tab.select_option(f"{form} [name=kind]", "steer")
    tab.fill(f"{form} [name=layer]", "3")
    tab.fill(f"{form} [name=scale]", "3")
    tab.click("[data-testid=add-intervention]")
    assert "steer layer 3 by “Love” − “Hate” × 3" in tab.text_content("[data-testid=interventions]")
    tab.click("[data-testid=compare]")
    _wait(tab, f"document.querySelector('{VIEW}').dataset.state === 'done'")

    original, steered = _column(tab, 1), _column(tab, 2)
    assert original == _texts(server)  # seed 0 when the form has none, as the panel says
    assert steered == _texts(server, interventions=[STEER])
    first = next(i for i, (a, b) in enumerate(zip(original, steered, strict=False)) if a != b)
    assert f"first diverge at generated token {first}" in tab.text_content(
        f"{PANEL} .compare-status"
    )
    assert tab.get_attribute(f"{VIEW} tbody tr[data-index='{first}']", "class") == "diverge"

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

    # Opened again in a fresh page: drawn from the file alone, nothing generated.
    fresh = tab.context.new_page()
    asked: list[str] = []
    fresh.on("request", lambda r: asked.append(r.url))
    fresh.goto(server.url("/"))
    fresh.set_input_files("[data-testid=open-run]", str(saved))
    _wait(fresh, f"document.querySelector('{VIEW}').dataset.state === 'done'")
    assert _column(fresh, 2) == steered and _column(fresh, 1) == original
    assert "Opened run.json" in fresh.text_content(f"{PANEL} .compare-status")
    assert not [u for u in asked if "/generate/stream" in u or u.endswith("/generate")]
    assert tab.errors == []
