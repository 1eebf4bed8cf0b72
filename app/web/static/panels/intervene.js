// Panel 7: interventions (ablate a head or an MLP, steer, patch) and the comparison of the
// original and the intervened generation, side by side, token by token, with the same seed,
// and what the interventions change in one layer's attention and logit lens. A comparison
// saves as one JSON file, or as one page that shows it with no server; both open again here.

import { h } from "../dom.js";
import { comparisonPage } from "../offline/page.js";
import { describeIntervention, divergenceNote, drawTokens, InternalsView } from "./compare-view.js";
import { readSaved, RUN_FORMAT } from "./saved.js";

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
   *   layer's internals for it; `onOpen()` stops the comparison under way before a file is
   *   drawn; `currentHead()` is the attention panel's {layer, head}, offered as the head to
   *   ablate.
   */
  constructor(root, { onCompare, onLayer, onOpen, currentHead }) {
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
    this.model = null; // {id, n_layers, n_heads}: what the interventions must fit
    this.onOpen = onOpen;
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

  /** No model that takes interventions is ready (none yet, or a remote one). */
  setReady(ready) {
    this.ready = ready;
    this.#showList();
  }

  /** Model `id` (its /config `config`) is ready: the list is checked against its shape. */
  setModel(id, config) {
    this.model = { id, n_layers: config.n_layers, n_heads: config.n_heads };
    this.setReady(true);
  }

  /** The comparison or internals under way were stopped, for `reason`. */
  stopped(reason) {
    if (this.table.dataset.state === "running") {
      this.status.textContent = `The comparison stopped: ${reason}.`;
      this.table.dataset.state = "stopped";
    }
    if (this.internals.root.dataset.state === "loading") this.internals.clear(`Stopped: ${reason}.`);
  }

  /** A comparison starts: two empty columns. */
  begin(run) {
    this.run = run;
    this.#saveable(false);
    this.status.textContent = `Comparing, seed ${run.settings.seed}…`;
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
    if (error) {
      // Not saveable: half a comparison would read as two runs that diverge at once.
      this.status.textContent = `The comparison failed: ${error.message}`;
      this.table.dataset.state = "failed";
      return;
    }
    this.#saveable(true);
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
    const whole = (text) => (/^\s*\d+\s*$/.test(text) ? Number(text) : NaN);
    const item = { kind, layer: whole(f.layer.value) };
    if (kind === "ablate_head") item.head = whole(f.head.value);
    if (kind === "steer") Object.assign(item, { contrast: [f.first.value, f.second.value], scale: Number(f.scale.value) });
    if (kind === "patch") {
      item.source = f.source.value;
      item.positions = f.positions.value.split(/[\s,]+/).filter(Boolean).map(whole);
    }
    const problem = formProblem(item);
    if (problem) {
      this.status.textContent = `Not added: ${problem}.`;
      return;
    }
    this.items.push(item);
    this.#showList();
  }

  #showList() {
    const misfits = this.items.map((item) => misfit(item, this.model));
    this.list.replaceChildren(
      ...this.items.map((item, i) =>
        h(
          "li",
          { class: misfits[i] ? "invalid" : "", title: misfits[i] ?? "" },
          describeIntervention(item),
          misfits[i] ? h("span", { class: "misfit" }, ` (${misfits[i]})`) : null,
          h("button", { type: "button", "aria-label": "Remove", onclick: () => this.#remove(i) }, "×"),
        ),
      ),
    );
    this.compareButton.disabled = !this.ready || !this.items.length || misfits.some(Boolean);
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
      const run = readSaved(await file.text()); // checked whole before anything changes
      this.onOpen?.();
      this.items = run.interventions ?? [];
      this.#showList();
      this.begin(run);
      this.finish();
      if (run.internals) this.internals.show(run.internals);
      else this.internals.clear("This comparison was saved without internals.");
      const elsewhere =
        this.model && this.model.id !== run.model
          ? ` Compare would run its interventions on ${this.model.id}, the model picked here.`
          : "";
      this.status.textContent =
        `Opened ${file.name}: “${run.prompt}”, ${run.model}. ${this.status.textContent}${elsewhere}`;
    } catch (error) {
      this.status.textContent = `Cannot open ${file.name}: ${error.message}`;
    }
  }
}

/** What is wrong with an intervention typed into the form, or null. */
function formProblem(item) {
  if (!Number.isInteger(item.layer)) return "the layer is a whole number from 0";
  if (item.kind === "ablate_head" && !Number.isInteger(item.head)) return "the head is a whole number from 0";
  if (item.kind === "steer") {
    if (item.contrast.some((text) => !text)) return "steering needs both texts";
    if (!Number.isFinite(item.scale)) return "the scale is a number";
  }
  if (item.kind === "patch") {
    if (!item.source) return "a patch needs a source text";
    if (!item.positions.length || !item.positions.every(Number.isInteger)) {
      return "positions are whole numbers from 0, such as 0, 3";
    }
  }
  return null;
}

/** Why `item` does not fit `model` ({id, n_layers, n_heads}), or null. */
function misfit(item, model) {
  if (!model) return null;
  if (item.layer >= model.n_layers) return `${model.id} has layers 0 to ${model.n_layers - 1}`;
  if (item.kind === "ablate_head" && item.head >= model.n_heads) {
    return `${model.id} has heads 0 to ${model.n_heads - 1}`;
  }
  return null;
}

function download(text, type, name) {
  const link = h("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  link.click();
  URL.revokeObjectURL(link.href);
}
