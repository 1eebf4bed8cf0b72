// Panel 2: the prompt, tokenized as it is typed. One chip per token; hovering or focusing a
// chip marks its characters in the prompt, through a backdrop drawn behind the textarea.

import { h, rovingFocus, visible } from "../dom.js";

export class PromptPanel {
  constructor(root, { onInput, onSubmit }) {
    this.textarea = root.querySelector("[data-testid=prompt]");
    this.backdrop = root.querySelector(".prompt-backdrop");
    this.chips = root.querySelector("[data-testid=tokens]");
    this.count = root.querySelector(".token-count");
    this.detail = root.querySelector(".chip-detail");
    this.expectation = root.querySelector(".prompt-expect");
    this.linkNote = root.querySelector(".link-note");
    this.answer = null;
    this.textarea.addEventListener("input", () => {
      this.#mark(null);
      onInput(this.value);
    });
    this.textarea.addEventListener("scroll", () => {
      this.backdrop.scrollTop = this.textarea.scrollTop;
    });
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        onSubmit();
      }
    });
    rovingFocus(this.chips, ".chip");
    const chipOf = (event) => event.target.closest?.(".chip");
    this.chips.addEventListener("mouseover", (event) => this.#focusChip(chipOf(event)));
    this.chips.addEventListener("focusin", (event) => this.#focusChip(chipOf(event)));
    this.chips.addEventListener("mouseleave", () => this.#focusChip(null));
    this.chips.addEventListener("focusout", () => this.#focusChip(null));
  }

  get value() {
    return this.textarea.value;
  }

  set value(text) {
    this.textarea.value = text;
    this.#mark(null);
  }

  /** While a generation runs the prompt is read-only: its tokens are the stream's prefix. */
  setBusy(busy) {
    this.textarea.readOnly = busy;
  }

  /** Show `/tokenize`'s answer for `text` as chips. */
  showTokens(answer, text) {
    this.answer = { ...answer, text, units: utf16Offsets(text) };
    const special = answer.special.filter(Boolean).length;
    this.count.textContent =
      `${answer.count} token${answer.count === 1 ? "" : "s"}` +
      (special ? `, ${special} special (marked)` : "");
    this.chips.replaceChildren(
      ...answer.tokens.map((token, i) =>
        h(
          "span",
          {
            class: answer.special[i] ? "chip special" : "chip",
            role: "listitem",
            tabindex: i === 0 ? 0 : -1,
            title: describe(answer, i),
            dataset: { index: i, id: answer.token_ids[i], text: token },
          },
          visible(token),
        ),
      ),
    );
  }

  /**
   * A remote model's tokens: as `showTokens` where a local tokenizer gave their texts, else
   * only their count (its server tokenized the prompt and told the ids alone).
   */
  showRemoteTokens(answer, text) {
    if (answer.tokens) {
      this.showTokens(answer, text);
      return;
    }
    this.answer = null;
    this.count.textContent =
      `${answer.count} token${answer.count === 1 ? "" : "s"}, as the remote server counts them`;
    this.chips.replaceChildren();
  }

  /** What the model expects of a prompt ({text}, from its config), or null: nothing to say. */
  expect(expectation) {
    this.expectation.textContent = expectation?.text ?? "";
    this.expectation.hidden = !expectation;
  }

  /** Say that the page replaced the prompt, and why. */
  replaced(message) {
    this.expectation.textContent = [this.expectation.textContent, message].filter(Boolean).join(" ");
    this.expectation.hidden = false;
  }

  /** What the page's link leaves out of the prompt (link-note.js); "" hides the note. */
  showLinkNote(text) {
    this.linkNote.textContent = text;
    this.linkNote.hidden = !text;
  }

  clearTokens(message = "") {
    this.answer = null;
    this.chips.replaceChildren();
    this.count.textContent = message;
    this.#mark(null);
  }

  #focusChip(chip) {
    if (!chip || !this.answer) {
      this.detail.textContent = "";
      this.#mark(null);
      return;
    }
    const i = Number(chip.dataset.index);
    this.detail.textContent = describe(this.answer, i);
    this.#mark(this.answer.offsets[i]);
  }

  /** Draw the prompt's text behind the textarea with `span` (code points) marked. */
  #mark(span) {
    const text = this.value;
    const units = this.answer?.text === text ? this.answer.units : null;
    if (!span || !units || span[0] === span[1]) {
      this.backdrop.replaceChildren(text + "\n");
      return;
    }
    const [start, end] = [units[span[0]], units[span[1]]];
    this.backdrop.replaceChildren(
      text.slice(0, start),
      h("mark", {}, text.slice(start, end)),
      text.slice(end) + "\n",
    );
    this.backdrop.scrollTop = this.textarea.scrollTop;
  }
}

function describe(answer, i) {
  const [start, end] = answer.offsets[i];
  const where = start === end ? "no characters of the prompt" : `characters ${start}–${end}`;
  const special = answer.special[i] ? ", special" : "";
  return `token ${i}: id ${answer.token_ids[i]}, ${where}${special}`;
}

/** Offsets count code points (Python's characters); JavaScript strings count UTF-16 units. */
function utf16Offsets(text) {
  const units = [0];
  for (const character of text) units.push(units[units.length - 1] + character.length);
  return units;
}

/**
 * What a model's config.json says about its prompts, {example, text}, or null: the demo
 * models declare `llmviz_example_prompt` and `llmviz_prompt_hint` (nano-sort reads only A, B, C).
 */
export function expectation(modelId, config) {
  const raw = config.raw_config ?? {};
  const hint = raw.llmviz_prompt_hint;
  const example = raw.llmviz_example_prompt;
  if (!hint && !example) return null;
  return {
    example,
    text: `${modelId} expects ${hint ?? "prompts like its example"}` +
      (example ? `, for example ${JSON.stringify(example)}.` : "."),
  };
}
