"""The viewer on a remote model (LLMVIZ_REMOTE_MODELS), in Chromium: another server of this
project generates; the page shows its tokens coloured by probability, their alternatives,
continues from one, and says that the internals are not available instead of failing."""

from __future__ import annotations

import json

import pytest

from tests.support.server import LiveServer

pytestmark = pytest.mark.browser

MODEL, PROMPT, TOKENS = "[data-testid=model]", "[data-testid=prompt]", "[data-testid=tokens]"
GENERATE, OUTPUT, ATTENTION = "[data-testid=generate]", "[data-testid=output]", "#attention-panel"


@pytest.fixture(scope="module")
def pair(model_root):
    """The remote (this project's server on tiny-gpt2) and the front the page talks to."""
    with LiveServer({"LLMVIZ_MODEL_ROOT": str(model_root)}) as far:
        remotes = {"far": {"url": far.url("/v1"), "model": "tiny-gpt2", "engine": "llmviz"}}
        env = {"LLMVIZ_MODEL_ROOT": str(model_root), "LLMVIZ_REMOTE_MODELS": json.dumps(remotes)}
        with LiveServer(env) as front:
            yield far, front


def _wait(page, expression: str) -> None:
    page.wait_for_function(expression, timeout=20_000)


def test_a_remote_models_tokens_probabilities_and_alternatives(tab, pair):
    far, front = pair
    tab.goto(front.url("/"))
    tab.wait_for_selector(f"{MODEL} optgroup[label=Remote] option[value=far]", state="attached")
    tab.select_option(MODEL, "far")
    _wait(tab, "!document.querySelector('[data-testid=generate]').disabled")
    card = tab.text_content(".arch")
    assert "llmviz at " + far.url("").removeprefix("http://").rstrip("/") in card
    assert "not available" in card
    assert "not available for a remote model" in tab.text_content(ATTENTION)

    tab.fill("[name=temperature]", "0")
    tab.fill("[name=max_new_tokens]", "8")
    tab.fill(PROMPT, "Hello world")
    count = far.post("/tokenize", model_id="tiny-gpt2", prompt="Hello world")["count"]
    _wait(
        tab,
        f"document.body.textContent.includes('{count} tokens, as the remote server counts them')",
    )

    tab.click(GENERATE)
    _wait(tab, f"document.querySelector('{OUTPUT}').dataset.state === 'done'")
    body = {"prompt": "Hello world", "max_new_tokens": 8, "temperature": 0}
    assert tab.text_content(OUTPUT) == far.generate(
        model_id="tiny-gpt2", return_full_text=False, **body
    )
    tokens = tab.locator(f"{OUTPUT} .tok")
    assert tokens.count() == 8
    # Each token is coloured by its probability (a background from the colour scale).
    colours = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(8)}
    assert colours and "rgba(0, 0, 0, 0)" not in colours

    # The alternatives of the third token, as the remote gave them; continue from another:
    # the prompt becomes the text up to that token, plus the choice.
    details = front.post("/generate", model_id="far", details=True, top_logprobs=5, **body)
    third = details["details"]["tokens"][2]
    tab.click(f"{OUTPUT} [data-index='2']")
    assert tab.locator(".alternatives li").count() == len(third["top_logprobs"]) == 5
    assert "chosen" in tab.text_content(".alternatives li:first-child")
    tab.locator(".alternatives button").nth(1).click()
    upto = "".join(t["text"] for t in details["details"]["tokens"][:2])
    continued = "Hello world" + upto + third["top_logprobs"][1]["text"]
    second = "(o => o.dataset.run === '2' && o.dataset.state === 'done')"
    _wait(tab, f"{second}(document.querySelector('{OUTPUT}'))")
    assert tab.input_value(PROMPT) == continued
    again = {**body, "prompt": continued}
    assert tab.text_content(OUTPUT) == front.generate(
        model_id="far", return_full_text=False, **again
    )
    assert tab.errors == []
