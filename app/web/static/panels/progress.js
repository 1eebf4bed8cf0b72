// Load progress: while the server loads a model (GET /models' `loading_progress`), a bar per
// model under the page's header: bytes downloaded of the model's files, then "loading
// weights". It polls GET /models once a second, only while the tab is visible and either a
// load is shown or one of the page's own calls is still waiting for its first answer (a model
// may be loading for it): an idle page sends nothing, so it adds no request-log lines, and no
// 401s while it has no API key. A load started by another client shows once this page waits.

import { h } from "../dom.js";

const POLL_MS = 1000;

export class LoadProgress {
  /**
   * `listing()` resolves to GET /models' answer; `waiting()` is true while one of the page's
   * calls waits for its first answer; the bars go right after `anchor`.
   */
  constructor(anchor, listing, waiting) {
    this.listing = listing;
    this.waiting = waiting;
    this.root = h("section", {
      class: "load-progress",
      "data-testid": "load-progress",
      "aria-live": "polite",
      style: "margin: 0 1rem; display: grid; gap: 0.25rem",
      hidden: true,
    });
    anchor.after(this.root);
    this.#poll();
  }

  /** Show `loads` (GET /models' `loading_progress` entries); none hides the bars. */
  show(loads) {
    this.root.hidden = loads.length === 0;
    this.root.replaceChildren(...loads.map(bar));
  }

  async #poll() {
    const wanted = !this.root.hidden || this.waiting();
    if (wanted && document.visibilityState === "visible") {
      try {
        this.show((await this.listing()).loading_progress ?? []);
      } catch {
        // The page's own calls report errors; a missed poll is retried.
      }
    }
    setTimeout(() => this.#poll(), POLL_MS);
  }
}

/** One model's bar and its words: "Downloading gpt2: 1.2 of 2.5 GB (model.safetensors)". */
function bar(load) {
  const total = load.total_bytes;
  const weights = load.phase === "loading_weights";
  const progress = h("progress", { max: 1, style: "width: 100%" });
  if (weights) progress.removeAttribute("value"); // indeterminate: no byte count to show
  else if (total) progress.value = load.done_bytes / total;
  const current = load.files.find((f) => f.total_bytes === null || f.done_bytes < f.total_bytes);
  const words = weights
    ? `Loading the weights of ${load.model_id} into memory…`
    : load.phase === "starting"
      ? `Starting to load ${load.model_id}…`
      : `Downloading ${load.model_id}: ${size(load.done_bytes)} of ${total ? size(total) : "?"}` +
        (current ? ` (${current.name})` : "");
  return h(
    "div",
    { dataset: { model: load.model_id, phase: load.phase } },
    h("label", {}, words, progress),
  );
}

function size(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}
