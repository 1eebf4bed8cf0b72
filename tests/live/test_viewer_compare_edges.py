"""Panel 7's edges, in Chromium against the real gunicorn server: a comparison stopped by
another model, a failed comparison (not saveable), interventions that do not fit the model
picked, the form's checks, the first layer whose attention an ablation changes, files that
cannot be drawn, and a prompt holding markup carried through a saved page."""

from __future__ import annotations

import json

import pytest

from tests.live.test_viewer_compare import PANEL, VIEW, _column, _wait, _wait_text

pytestmark = pytest.mark.browser

FORM = f"{PANEL} .intervene-form"
STATUS = f"{PANEL} .compare-status"
INTERNALS = "[data-testid=internals]"


def _open_viewer(tab, server, model: str, prompt: str, tokens: int = 4) -> None:
    tab.goto(server.url(f"/?model={model}&prompt={prompt}&temperature=0&max_new_tokens={tokens}"))
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")


def _add(tab, kind: str, **fields: str) -> None:
    tab.select_option(f"{FORM} [name=kind]", kind)
    for name, value in fields.items():
        tab.fill(f"{FORM} [name={name}]", value)
    tab.click("[data-testid=add-intervention]")


def test_another_model_stops_the_comparison_and_flags_what_does_not_fit(tab, server):
    _open_viewer(tab, server, "llmviz/shakespeare", "ROMEO%3A", tokens=200)
    _add(tab, "ablate_head", layer="5", head="5")
    tab.click("[data-testid=compare]")
    _wait(tab, f"document.querySelectorAll('{VIEW} tbody tr').length > 2")
    tab.select_option("[data-testid=model]", "llmviz/nano-sort")
    _wait_text(tab, STATUS, "The comparison stopped: another model was picked.")
    assert tab.get_attribute(VIEW, "data-state") == "stopped"
    assert tab.is_disabled("[data-testid=save-run]")
    _wait(tab, "document.querySelector('[data-testid=interventions] li.invalid') !== null")
    assert "llmviz/nano-sort has layers 0 to 2" in tab.text_content("[data-testid=interventions]")
    assert tab.is_disabled("[data-testid=compare]")  # until it is removed
    tab.click("[data-testid=interventions] li button")
    _add(tab, "ablate_head", layer="0", head="1")
    assert not tab.is_disabled("[data-testid=compare]")
    # Only nano-sort refusing to tokenize "ROMEO:" (letters outside its vocabulary): a 400.
    assert [e for e in tab.errors if "status of 400" not in e] == []


def test_a_failed_comparison_says_why_and_cannot_be_saved(tab, server):
    _open_viewer(tab, server, "llmviz/nano-sort", "CBABBC")
    _add(tab, "patch", layer="0", source="A" * 22, positions="5")  # past the 12-token context
    tab.click("[data-testid=compare]")
    _wait_text(tab, STATUS, "The comparison failed: interventions.0.source:")
    assert tab.get_attribute(VIEW, "data-state") == "failed"
    assert tab.is_disabled("[data-testid=save-run]") and tab.is_disabled("[data-testid=save-page]")
    assert [e for e in tab.errors if "status of 400" not in e] == []  # the refused request


def test_the_form_refuses_what_is_not_an_intervention(tab, server):
    _open_viewer(tab, server, "llmviz/nano-sort", "CBABBC")
    for kind, fields, problem in [
        ("patch", {"layer": "0", "source": "ABC", "positions": "a, 1"}, "positions are whole"),
        ("patch", {"layer": "0", "source": "", "positions": "1"}, "a patch needs a source"),
        ("steer", {"layer": "0", "first": "A", "second": ""}, "steering needs both texts"),
    ]:  # (a layer or head like 1.5 or -1 never submits: the number fields' own min and step)
        _add(tab, kind, **fields)
        assert tab.text_content(STATUS).startswith(f"Not added: {problem}")
    assert tab.eval_on_selector_all("[data-testid=interventions] li", "l => l.length") == 0


def test_an_ablation_opens_the_internals_on_the_next_layer(tab, server):
    """Ablating head 1 of layer 0 changes layer 0's output, not its attention: the view
    starts at layer 1, where attention first differs."""
    _open_viewer(tab, server, "llmviz/nano-sort", "CBABBC")
    _add(tab, "ablate_head", layer="0", head="1")
    tab.click("[data-testid=compare]")
    _wait(tab, f"document.querySelector('{INTERNALS}').dataset.state === 'done'")
    assert tab.input_value(f"{INTERNALS} [name=layer]") == "1"
    assert "Layer 1 on the original run's" in tab.text_content(INTERNALS)


def _saved_run(tab, tmp_path):
    with tab.expect_download() as download:
        tab.click("[data-testid=save-run]")
    path = tmp_path / "run.json"
    download.value.save_as(path)
    return json.loads(path.read_text())


def test_files_that_cannot_be_drawn_change_nothing_and_markup_stays_text(tab, server, tmp_path):
    _open_viewer(tab, server, "llmviz/nano-sort", "CBABBC")
    _add(tab, "ablate_head", layer="0", head="1")
    tab.click("[data-testid=compare]")
    _wait(tab, f"document.querySelector('{INTERNALS}').dataset.state === 'done'")
    run = _saved_run(tab, tmp_path)
    shown = _column(tab, 2)

    broken = {
        "no-text.json": {**run, "original": [{"id": 3}]},
        "bad-kind.json": {**run, "interventions": [{"kind": "rotate", "layer": 0}]},
        "bad-internals.json": {**run, "internals": {"layer": 3}},
    }
    for name, content in broken.items():
        (tmp_path / name).write_text(json.dumps(content))
        tab.set_input_files("[data-testid=open-run]", str(tmp_path / name))
        _wait_text(tab, STATUS, f"Cannot open {name}: its ")
        assert _column(tab, 2) == shown  # the comparison on screen is untouched
        assert "ablate head 1 of layer 0" in tab.text_content("[data-testid=interventions]")

    # Another model's file: drawn, and the status says where Compare would run.
    other = {**run, "model": "llmviz/shakespeare"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    tab.set_input_files("[data-testid=open-run]", str(tmp_path / "other.json"))
    _wait_text(tab, STATUS, "Opened other.json")
    assert "Compare would run its interventions on llmviz/nano-sort" in tab.text_content(STATUS)

    # A prompt holding markup, through a saved page opened from disk: text, not markup.
    markup = "</script><img src=x onerror=\"document.title='pwned'\"><!--"
    (tmp_path / "markup.json").write_text(json.dumps({**run, "prompt": markup}))
    tab.set_input_files("[data-testid=open-run]", str(tmp_path / "markup.json"))
    _wait_text(tab, STATUS, "Opened markup.json")
    with tab.expect_download() as download:
        tab.click("[data-testid=save-page]")
    page_file = tmp_path / "markup.html"
    download.value.save_as(page_file)
    page = tab.context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_file.as_uri())
    _wait(page, f"document.querySelector('{VIEW}').dataset.state === 'done'")
    assert markup in page.text_content("[data-testid=saved-about]")
    assert page.eval_on_selector_all("img", "images => images.length") == 0
    assert page.title() == "llmviz comparison: llmviz/nano-sort" and errors == []
    (tmp_path / "sh.json").write_text(json.dumps(other))
    page.set_input_files("[data-testid=open-run]", str(tmp_path / "sh.json"))
    _wait_text(page, "[data-testid=saved-about]", "Opened sh.json")
    assert page.title() == "llmviz comparison: llmviz/shakespeare"
    assert tab.errors == []
