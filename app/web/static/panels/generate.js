// Panel 3: the sampling controls, Generate and Stop, and the streamed output: one span per
// token, coloured by its probability, whose alternatives open on hover, click or Enter.

import { cividis } from "../colors.js";
import { h, percent, rovingFocus, visible } from "../dom.js";

// The request fields the form holds, and how each is read.
const FIELDS = {
  max_new_tokens: "integer",
  temperature: "number",
  top_p: "number",
  top_k: "integer",
  repetition_penalty: "number",
  seed: "integer",
  stop: "lines",
};

export class GeneratePanel {
  constructor(root, popover, { onGenerate, onStop, onAlternative, onChange }) {
    this.form = root.querySelector(".controls");
    this.generateButton = root.querySelector("[data-testid=generate]");
    this.stopButton = root.querySelector("[data-testid=stop]");
    this.status = root.querySelector(".gen-status");
    this.output = root.querySelector("[data-testid=output]");
    this.popover = popover;
    this.onAlternative = onAlternative;
    this.tokens = [];
    this.pinned = false;
    this.closing = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      onGenerate();
    });
    this.form.addEventListener("change", onChange);
    this.stopButton.addEventListener("click", onStop);
    this.#wireAlternatives();
  }

  /** The request fields, as the API wants them. */
  params() {
    const params = {};
    for (const [name, kind] of Object.entries(FIELDS)) {
      const raw = this.form.elements[name].value.trim();
      if (kind === "lines") params[name] = stopStrings(raw);
      else if (raw !== "") params[name] = kind === "integer" ? Number.parseInt(raw, 10) : Number(raw);
    }
    return params;
  }

  /** The fields as typed, for the URL. */
  fieldValues() {
    return Object.fromEntries(Object.keys(FIELDS).map((n) => [n, this.form.elements[n].value]));
  }

  setFieldValues(values) {
    for (const name of Object.keys(FIELDS)) {
      if (values[name] !== undefined) this.form.elements[name].value = values[name];
    }
  }

  setReady(ready) {
    this.ready = ready;
    this.generateButton.disabled = !ready || this.running;
  }

  setRunning(running) {
    this.running = running;
    this.generateButton.disabled = !this.ready || running;
    this.stopButton.disabled = !running;
  }

  /** A new generation: empty output. `note` says what the page changed in the request. */
  begin(note = "") {
    this.#close();
    this.tokens = [];
    this.output.replaceChildren();
    this.output.dataset.state = "running";
    this.output.dataset.run = Number(this.output.dataset.run ?? 0) + 1; // tells runs apart
    this.status.textContent = note || "Generating…";
    this.setRunning(true);
    this.note = note;
  }

  /** No output: another model was picked. */
  clear() {
    this.#close();
    this.tokens = [];
    this.output.replaceChildren();
    delete this.output.dataset.state;
    this.status.textContent = "";
  }

  /** One `token` event of the stream. */
  addToken(token) {
    const i = this.tokens.length;
    this.tokens.push(token);
    const p = probability(token.logprob);
    const span = h(
      "span",
      {
        class: token.special ? "tok special" : "tok",
        tabindex: i === 0 ? 0 : -1,
        role: "button",
        "aria-haspopup": "dialog",
        dataset: { index: i, id: token.id },
        style: `background:${cividis.css(p)};color:${cividis.ink(p)}`,
      },
      token.delta ?? token.text,
    );
    this.output.append(span);
    this.status.textContent = `${this.note ? this.note + " " : ""}${i + 1} tokens…`;
  }

  /** Text that carries no token: the `done` event's held-back `delta`. */
  addText(text) {
    if (text) this.output.append(text);
  }

  finish(done) {
    const t = done.timing;
    this.status.textContent =
      (this.note ? `${this.note} ` : "") +
      `${done.generated_tokens} tokens in ${(t.total_ms / 1000).toFixed(2)} s ` +
      `(${t.tokens_per_s} tokens/s, first after ${Math.round(t.ttft_ms)} ms); ` +
      `finished by ${done.finish_reason}.`;
    this.output.dataset.state = "done";
  }

  stopped() {
    this.status.textContent = `Stopped after ${this.tokens.length} tokens.`;
    this.output.dataset.state = "stopped";
  }

  failed() {
    this.status.textContent = `Failed after ${this.tokens.length} tokens.`;
    this.output.dataset.state = "error";
  }

  #wireAlternatives() {
    rovingFocus(this.output, ".tok");
    const tokenOf = (event) => event.target.closest?.(".tok");
    this.output.addEventListener("mouseover", (event) => {
      const span = tokenOf(event);
      if (span && !this.pinned) this.#open(span, false);
    });
    this.output.addEventListener("click", (event) => {
      const span = tokenOf(event);
      if (span) this.#open(span, true);
    });
    this.output.addEventListener("keydown", (event) => {
      const span = tokenOf(event);
      if (span && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        this.#open(span, true);
      }
    });
    this.output.addEventListener("mouseleave", () => this.#closeSoon());
    this.popover.addEventListener("mouseenter", () => clearTimeout(this.closing));
    this.popover.addEventListener("mouseleave", () => this.#closeSoon());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !this.popover.hidden) {
        const anchor = this.anchor;
        this.#close();
        anchor?.focus();
      }
    });
    document.addEventListener("pointerdown", (event) => {
      if (!this.popover.contains(event.target) && !event.target.closest?.(".tok")) this.#close();
    });
  }

  #open(span, pinned) {
    clearTimeout(this.closing);
    const index = Number(span.dataset.index);
    const token = this.tokens[index];
    this.anchor = span;
    this.pinned = pinned;
    const choice = (alt) => {
      const p = probability(alt.logprob);
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            dataset: { id: alt.id },
            onclick: () => {
              this.#close();
              this.onAlternative(index, alt);
            },
          },
          h("span", { class: "alt-text" }, visible(alt.text)),
          h("span", { class: "alt-bar", style: `width:${Math.max(1, p * 100)}%` }),
          h("span", { class: "alt-p" }, percent(p) + (chosen(alt, token) ? " · chosen" : "")),
        ),
      );
    };
    const alternatives = token.top_logprobs ?? [];
    this.popover.replaceChildren(
      h("p", { class: "alt-head" }, `Token ${index}: `, h("b", {}, visible(token.text)),
        ` · ${percent(probability(token.logprob))}` + (token.id >= 0 ? ` · id ${token.id}` : "")),
      alternatives.length
        ? h("ul", {}, alternatives.map(choice))
        : h("p", {}, "No alternatives were asked for."),
      h("p", { class: "hint" }, "Choose one to continue the text from it."),
    );
    const rect = span.getBoundingClientRect();
    this.popover.style.left = `${Math.max(4, rect.left + window.scrollX)}px`;
    this.popover.style.top = `${rect.bottom + window.scrollY + 4}px`;
    this.popover.hidden = false;
    if (pinned) this.popover.querySelector("button")?.focus();
  }

  #closeSoon() {
    if (this.pinned) return;
    clearTimeout(this.closing);
    this.closing = setTimeout(() => this.#close(), 250);
  }

  #close() {
    clearTimeout(this.closing);
    this.popover.hidden = true;
    this.pinned = false;
  }
}

function probability(logprob) {
  return logprob === null || logprob === undefined ? 0 : Math.exp(logprob);
}

/** One stop string a line; `\n`, `\t` and `\\` are escapes, so a line break can be one. */
function stopStrings(text) {
  const escapes = { n: "\n", t: "\t", "\\": "\\" };
  return text
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => line.replace(/\\([nt\\])/g, (_, c) => escapes[c]));
}

/** Whether `alt` is the token chosen: by id, or by text where the server gave no ids (-1). */
function chosen(alt, token) {
  return token.id >= 0 ? alt.id === token.id : alt.text === token.text;
}
