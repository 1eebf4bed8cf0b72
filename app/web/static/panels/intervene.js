// Panel 7: interventions (ablate a head or an MLP, steer, patch) and the comparison of the
// original and the intervened generation, side by side, token by token, with the same seed,
// and what the interventions change in one layer's attention and logit lens. A comparison
// saves as one JSON file, or as one page that shows it with no server; both open again here.

import { h } from "../dom.js";
import { comparisonPage } from "../offline/page.js";
import {
  describeIntervention,
  divergenceNote,
  drawTokens,
  InternalsView,
  readSaved,
  RUN_FORMAT,
} from "./compare-view.js";

const KINDS = {
  ablate_head: "Ablate a head",
  ablate_mlp: "Ablate an MLP",
  steer: "Steer with a contrast",
  patch: "Patch from a source",
};

export class IntervenePanel {
  /**
   * @param root the panel's section
   * @param {object} hooks `onCompare()` runs a comparison; `onLayer(layer)` reads another
   *   layer's internals for it; `currentHead()` is the attention panel's {layer, head},
   *   offered as the head to ablate.
   */
  constructor(root, { onCompare, onLayer, currentHead }) {
    this.form = root.querySelector(".intervene-form");
    this.list = root.querySelector("[data-testid=interventions]");
    this.compareButton = root.querySelector("[data-testid=compare]");
    this.status = root.querySelector(".compare-status");
    this.table = root.querySelector("[data-testid=compare-view]");
    this.saveButton = root.querySelector("[data-testid=save-run]");
    this.savePageButton = root.querySelector("[data-testid=save-page]");
    this.openInput = root.querySelector("[data-testid=open-run]");
    this.internals = new InternalsView(root.querySelector("[data-testid=internals]"), onLayer);
    this.items = [];
    this.ready = false;
    // The comparison shown: {model, prompt, settings, interventions, original, intervened,
    // internals?}, as it is saved (with `format`).
    this.run = null;
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
    this.savePageButton.addEventListener("click", () => this.#savePage());
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
    this.#saveable(false);
    this.status.textContent = "Comparing…";
    this.internals.clear("");
    drawTokens(this.table, run);
    this.table.dataset.state = "running";
  }

  /** One token of one side ("original" or "intervened"). */
  addToken(side, token) {
    this.run[side].push(token);
    drawTokens(this.table, this.run);
  }

  finish(error = null) {
    this.#saveable(Boolean(this.run));
    if (error) {
      this.status.textContent = `The comparison failed: ${error.message}`;
      return;
    }
    this.status.textContent = divergenceNote(this.run);
    this.table.dataset.state = "done";
  }

  internalsLoading(layer) {
    this.internals.loading(layer);
  }

  /** One layer read with and without the interventions (difference.js); saved with the run. */
  showInternals(internals, layers) {
    this.run.internals = internals;
    this.internals.show(internals, layers);
  }

  internalsFailed(message) {
    this.internals.clear(message);
    this.internals.root.dataset.state = "failed";
  }

  #saveable(yes) {
    this.saveButton.disabled = !yes;
    this.savePageButton.disabled = !yes;
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
          describeIntervention(item),
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

  #save() {
    download(JSON.stringify({ format: RUN_FORMAT, ...this.run }, null, 1), "application/json", "llmviz-compare.json");
  }

  async #savePage() {
    try {
      const page = await comparisonPage({ format: RUN_FORMAT, ...this.run });
      download(page, "text/html", "llmviz-compare.html");
    } catch (error) {
      this.status.textContent = `Cannot build the page: ${error.message}`;
    }
  }

  async #open() {
    const file = this.openInput.files?.[0];
    if (!file) return;
    try {
      const run = readSaved(await file.text());
      this.items = run.interventions ?? [];
      this.#showList();
      this.begin(run);
      this.finish();
      if (run.internals) this.internals.show(run.internals);
      else this.internals.clear("This comparison was saved without internals.");
      this.status.textContent = `Opened ${file.name}: “${run.prompt}”, ${run.model}. ` + this.status.textContent;
    } catch (error) {
      this.status.textContent = `Cannot open ${file.name}: ${error.message}`;
    }
  }
}

function download(text, type, name) {
  const link = h("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  link.click();
  URL.revokeObjectURL(link.href);
}
