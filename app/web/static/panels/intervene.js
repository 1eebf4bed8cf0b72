// Panel 7: interventions (ablate a head or an MLP, steer, patch) and the comparison of the
// original and the intervened generation, side by side, token by token, with the same seed;
// a comparison saves as one JSON file and opens again from it, without asking the server.

import { cividis } from "../colors.js";
import { h, percent, visible } from "../dom.js";

const KINDS = {
  ablate_head: "Ablate a head",
  ablate_mlp: "Ablate an MLP",
  steer: "Steer with a contrast",
  patch: "Patch from a source",
};
export const RUN_FORMAT = "llmviz-compare/1"; // the saved file's `format`

export class IntervenePanel {
  /**
   * @param root the panel's section
   * @param {object} hooks `onCompare()` runs a comparison; `currentHead()` is the attention
   *   panel's {layer, head}, offered as the head to ablate.
   */
  constructor(root, { onCompare, currentHead }) {
    this.form = root.querySelector(".intervene-form");
    this.list = root.querySelector("[data-testid=interventions]");
    this.compareButton = root.querySelector("[data-testid=compare]");
    this.status = root.querySelector(".compare-status");
    this.table = root.querySelector("[data-testid=compare-view]");
    this.saveButton = root.querySelector("[data-testid=save-run]");
    this.openInput = root.querySelector("[data-testid=open-run]");
    this.items = [];
    this.ready = false;
    this.run = null; // the comparison shown: {prompt, settings, interventions, original, intervened}
    this.form.elements.kind.replaceChildren(
      ...Object.entries(KINDS).map(([value, label]) => h("option", { value }, label)),
    );
    this.form.elements.kind.addEventListener("change", () => this.#showFields());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#add();
    });
    root.querySelector(".use-head").addEventListener("click", () => {
      const { layer, head } = currentHead();
      this.form.elements.kind.value = "ablate_head";
      this.form.elements.layer.value = layer;
      this.form.elements.head.value = head;
      this.#showFields();
    });
    this.compareButton.addEventListener("click", () => onCompare());
    this.saveButton.addEventListener("click", () => this.#save());
    this.openInput.addEventListener("change", () => this.#open());
    this.#showFields();
    this.#showList();
  }

  /** The interventions to send, as the API takes them. */
  interventions() {
    return this.items.map((item) => ({ ...item }));
  }

  /** Whether a model that takes interventions is ready (not a remote one). */
  setReady(ready) {
    this.ready = ready;
    this.compareButton.disabled = !ready || !this.items.length;
  }

  /** A comparison starts: two empty columns. */
  begin(run) {
    this.run = run;
    this.saveButton.disabled = true;
    this.status.textContent = "Comparing…";
    this.#render();
  }

  /** One token of one side ("original" or "intervened"). */
  addToken(side, token) {
    this.run[side].push(token);
    this.#render();
  }

  finish(error = null) {
    this.saveButton.disabled = !this.run;
    if (error) {
      this.status.textContent = `The comparison failed: ${error.message}`;
      return;
    }
    const at = firstDifference(this.run.original, this.run.intervened);
    this.status.textContent =
      at === null
        ? "The two generations are the same token for token."
        : `They first diverge at generated token ${at}.`;
    this.table.dataset.state = "done";
  }

  #showFields() {
    const kind = this.form.elements.kind.value;
    for (const field of this.form.querySelectorAll("[data-for]")) {
      field.hidden = !field.dataset.for.split(" ").includes(kind);
    }
  }

  #add() {
    const f = this.form.elements;
    const kind = f.kind.value;
    const item = { kind, layer: Number.parseInt(f.layer.value, 10) };
    if (kind === "ablate_head") item.head = Number.parseInt(f.head.value, 10);
    if (kind === "steer") Object.assign(item, { contrast: [f.first.value, f.second.value], scale: Number(f.scale.value) });
    if (kind === "patch") {
      item.source = f.source.value;
      item.positions = f.positions.value.split(/[\s,]+/).filter(Boolean).map((p) => Number.parseInt(p, 10));
    }
    this.items.push(item);
    this.#showList();
  }

  #showList() {
    this.list.replaceChildren(
      ...this.items.map((item, i) =>
        h(
          "li",
          {},
          describe(item),
          h("button", { type: "button", "aria-label": "Remove", onclick: () => this.#remove(i) }, "×"),
        ),
      ),
    );
    this.compareButton.disabled = !this.ready || !this.items.length;
  }

  #remove(index) {
    this.items.splice(index, 1);
    this.#showList();
  }

  #render() {
    const { original, intervened } = this.run;
    const at = firstDifference(original, intervened);
    const rows = Array.from({ length: Math.max(original.length, intervened.length) }, (_, i) =>
      h(
        "tr",
        { class: at !== null && i === at ? "diverge" : "", dataset: { index: i } },
        h("td", { class: "n" }, String(i)),
        cell(original[i]),
        cell(intervened[i]),
      ),
    );
    this.table.replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "original"), h("th", {}, "intervened"))),
      h("tbody", {}, ...rows),
    );
    this.table.dataset.state = "running";
  }

  #save() {
    const blob = new Blob([JSON.stringify({ format: RUN_FORMAT, ...this.run }, null, 1)], {
      type: "application/json",
    });
    const link = h("a", { href: URL.createObjectURL(blob), download: "llmviz-compare.json" });
    link.click();
    URL.revokeObjectURL(link.href);
  }

  async #open() {
    const file = this.openInput.files?.[0];
    if (!file) return;
    try {
      const run = JSON.parse(await file.text());
      if (run.format !== RUN_FORMAT) throw new Error(`not a saved comparison (${RUN_FORMAT})`);
      this.items = run.interventions ?? [];
      this.#showList();
      this.begin(run);
      this.finish();
      this.status.textContent = `Opened ${file.name}: “${run.prompt}”, ${run.model}. ` + this.status.textContent;
    } catch (error) {
      this.status.textContent = `Cannot open ${file.name}: ${error.message}`;
    }
  }
}

/** The index of the first generated token where the two runs differ, or null. */
export function firstDifference(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i]?.text !== b[i]?.text || a[i]?.id !== b[i]?.id) return i;
  }
  return null;
}

function cell(token) {
  if (!token) return h("td", {});
  const p = Math.exp(token.logprob ?? -Infinity);
  return h(
    "td",
    { title: `${percent(p)} · id ${token.id}` },
    h(
      "span",
      { class: "tok", dataset: { text: token.text }, style: `background:${cividis.css(p)};color:${cividis.ink(p)}` },
      visible(token.text),
    ),
    h("span", { class: "p" }, percent(p)),
  );
}

function describe(item) {
  switch (item.kind) {
    case "ablate_head":
      return `ablate head ${item.head} of layer ${item.layer}`;
    case "ablate_mlp":
      return `ablate the MLP of layer ${item.layer}`;
    case "steer":
      return `steer layer ${item.layer} by “${item.contrast[0]}” − “${item.contrast[1]}” × ${item.scale}`;
    default:
      return `patch layer ${item.layer} at ${item.positions.join(", ")} from “${item.source}”`;
  }
}
