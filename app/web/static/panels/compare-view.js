// A comparison of two runs of one prompt, the original and the intervened, as panel 7 and
// a saved comparison page draw it: the two generations token-aligned, and how the
// interventions change one layer's attention and logit lens on the same tokens.
// It imports only colors.js and dom.js: a saved page carries it (offline/page.js).

import { cividis, diverging, viridis } from "../colors.js";
import { h, percent, visible } from "../dom.js";

const SIDES = ["original", "intervened"];

/** The index of the first generated token where the two runs differ, or null. */
export function firstDifference(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i]?.text !== b[i]?.text || a[i]?.id !== b[i]?.id) return i;
  }
  return null;
}

export function describeIntervention(item) {
  switch (item.kind) {
    case "ablate_head":
      return `ablate head ${item.head} of layer ${item.layer}`;
    case "ablate_mlp":
      return `ablate the MLP of layer ${item.layer}`;
    case "steer":
      return item.contrast
        ? `steer layer ${item.layer} by “${item.contrast[0]}” − “${item.contrast[1]}” × ${item.scale}`
        : `steer layer ${item.layer} by a vector × ${item.scale}`;
    default:
      return `patch layer ${item.layer} at ${item.positions.join(", ")} from “${item.source}”`;
  }
}

/** Generation settings as words: `max_new_tokens 32, temperature 0.7, seed 0`. */
export function describeSettings(settings) {
  return Object.entries(settings)
    .filter(([, value]) => !(Array.isArray(value) && !value.length))
    .map(([name, value]) => `${name} ${Array.isArray(value) ? JSON.stringify(value) : value}`)
    .join(", ");
}

/** Where the two runs part, as a sentence. */
export function divergenceNote(run) {
  const at = firstDifference(run.original, run.intervened);
  return at === null
    ? "The two generations are the same token for token."
    : `They first diverge at generated token ${at}.`;
}

/** Both runs' generated tokens into `table`, row by row, the first divergence marked. */
export function drawTokens(table, run) {
  const { original, intervened } = run;
  const at = firstDifference(original, intervened);
  const rows = Array.from({ length: Math.max(original.length, intervened.length) }, (_, i) =>
    h(
      "tr",
      { class: at !== null && i === at ? "diverge" : "", dataset: { index: i } },
      h("td", { class: "n" }, String(i)),
      tokenCell(original[i]),
      tokenCell(intervened[i]),
    ),
  );
  table.replaceChildren(
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "original"), h("th", {}, "intervened"))),
    h("tbody", {}, ...rows),
  );
}

function tokenCell(token) {
  if (!token) return h("td", {});
  const p = Math.exp(token.logprob ?? -Infinity);
  const others = (token.top_logprobs ?? []).map((a) => `${visible(a.text)} ${percent(Math.exp(a.logprob))}`);
  const title = [`${percent(p)} · id ${token.id}`, ...(others.length ? ["likeliest: " + others.join(", ")] : [])];
  return h(
    "td",
    { title: title.join("\n") },
    h(
      "span",
      { class: "tok", dataset: { text: token.text }, style: `background:${cividis.css(p)};color:${cividis.ink(p)}` },
      visible(token.text),
    ),
    h("span", { class: "p" }, percent(p)),
  );
}

/**
 * How the interventions change one layer on the same tokens: that layer's attention (each
 * run's, and the difference) for a chosen head, and its logit lens position by position.
 * `internals` is what difference.js's `inspectBoth` returns (and a saved run keeps).
 */
export class InternalsView {
  /**
   * @param root an element to fill
   * @param {(layer: number) => void} [onLayer] asks for another layer; without it (a saved
   *   page) the layer stays the saved one
   */
  constructor(root, onLayer) {
    this.root = root;
    this.internals = null;
    this.note = h("p", { class: "internals-note" });
    this.layerSelect = h("select", { name: "layer", onchange: () => onLayer?.(Number(this.layerSelect.value)) });
    this.headSelect = h("select", { name: "head", onchange: () => this.#drawAttention() });
    this.canvases = Object.fromEntries(
      [...SIDES, "difference"].map((name) => [name, h("canvas", { dataset: { testid: `attention-${name}` } })]),
    );
    this.readout = h("p", { class: "internals-readout", "data-testid": "attention-delta" });
    this.lens = h("table", { class: "compare lens-delta", "data-testid": "lens-delta" });
    this.controls = h(
      "div",
      { class: "row" },
      h("label", {}, "layer ", this.layerSelect),
      h("label", {}, "head ", this.headSelect),
    );
    const figures = Object.entries(this.canvases).map(([name, canvas]) =>
      h("figure", {}, canvas, h("figcaption", {}, name === "difference" ? "intervened − original" : name)),
    );
    this.canvases.difference.addEventListener("mousemove", (event) => this.#pointAt(event));
    this.body = h(
      "div",
      { class: "internals-body" },
      h("div", {}, h("div", { class: "attention-delta" }, ...figures), this.readout),
      h("div", { class: "lens-scroll" }, this.lens),
    );
    root.replaceChildren(this.note, this.controls, this.body);
    this.clear("");
  }

  clear(message) {
    this.internals = null;
    this.note.textContent = message;
    this.controls.hidden = true;
    this.body.hidden = true;
    this.root.dataset.state = "empty";
    this.readout.textContent = "";
    this.lens.replaceChildren();
  }

  loading(layer) {
    this.clear(`Inspecting layer ${layer} with and without the interventions…`);
    this.root.dataset.state = "loading";
  }

  /** Draw `internals`; `layers` (the model's count) makes the layer selectable. */
  show(internals, layers = null) {
    this.internals = internals;
    const { layer, heads, labels } = internals;
    // Without `layers` (a saved page) the saved layer is the only one there is.
    const choices = layers === null ? [layer] : Array.from({ length: layers }, (_, i) => i);
    this.layerSelect.replaceChildren(
      ...choices.map((i) => h("option", { value: i, selected: i === layer }, String(i))),
    );
    this.layerSelect.disabled = layers === null;
    const head = Math.min(Number(this.headSelect.value) || 0, heads - 1);
    this.headSelect.replaceChildren(
      ...Array.from({ length: heads }, (_, i) => h("option", { value: i, selected: i === head }, String(i))),
    );
    this.controls.hidden = false;
    this.body.hidden = false;
    this.note.textContent =
      `Layer ${layer} on the original run's ${labels.length} tokens (prompt and generation), read ` +
      "once as the model is and once with the interventions.";
    this.#drawAttention();
    this.#drawLens();
    this.root.dataset.state = "done";
  }

  #drawAttention() {
    const { original, intervened, labels } = this.internals;
    const head = Number(this.headSelect.value);
    const a = original.attention[head];
    const b = intervened.attention[head];
    const n = labels.length;
    let largest = { delta: 0, query: 0, key: 0 };
    for (let q = 0; q < n; q++) {
      for (let k = 0; k <= q; k++) {
        const delta = b[q][k] - a[q][k];
        if (Math.abs(delta) > Math.abs(largest.delta)) largest = { delta, query: q, key: k };
      }
    }
    const scale = Math.max(Math.abs(largest.delta), 1e-6);
    paint(this.canvases.original, n, viridis.lut, (q, k) => Math.sqrt(Math.max(a[q][k], 0)));
    paint(this.canvases.intervened, n, viridis.lut, (q, k) => Math.sqrt(Math.max(b[q][k], 0)));
    paint(this.canvases.difference, n, diverging.lut, (q, k) => 0.5 + (b[q][k] - a[q][k]) / (2 * scale));
    Object.assign(this.readout.dataset, { head, delta: largest.delta, query: largest.query, key: largest.key });
    this.readout.textContent =
      largest.delta === 0
        ? `Head ${head}: the interventions change no attention weight of this layer.`
        : `Head ${head}: the largest change is ${signed(largest.delta)}, query ${largest.query} ` +
          `“${visible(labels[largest.query])}” to key ${largest.key} “${visible(labels[largest.key])}” ` +
          `(${a[largest.query][largest.key].toFixed(4)} → ${b[largest.query][largest.key].toFixed(4)}). ` +
          `Purple: less, orange: more, at most ±${scale.toFixed(4)}.`;
  }

  #pointAt(event) {
    const { original, intervened, labels } = this.internals ?? {};
    if (!labels) return;
    const box = this.canvases.difference.getBoundingClientRect();
    const n = labels.length;
    const q = Math.floor(((event.clientY - box.top) / box.height) * n);
    const k = Math.floor(((event.clientX - box.left) / box.width) * n);
    if (q < 0 || q >= n || k < 0 || k > q) return;
    const head = Number(this.headSelect.value);
    const [a, b] = [original.attention[head][q][k], intervened.attention[head][q][k]];
    this.readout.textContent =
      `Query ${q} “${visible(labels[q])}”, key ${k} “${visible(labels[k])}”: ` +
      `${a.toFixed(4)} → ${b.toFixed(4)} (${signed(b - a)}).`;
  }

  #drawLens() {
    const { original, intervened, labels, token_text: text } = this.internals;
    const top = (side, t) => ({ id: side.lens.ids[t][0], p: side.lens.probs[t][0] });
    const rows = labels.map((label, t) => {
      const [a, b] = [top(original, t), top(intervened, t)];
      const [ra, rb] = [original.lens.next_token_rank[t], intervened.lens.next_token_rank[t]];
      return h(
        "tr",
        { class: a.id === b.id ? "" : "changed", dataset: { position: t } },
        h("td", { class: "n" }, String(t)),
        h("td", {}, visible(label)),
        lensCell(text[a.id], a.p),
        lensCell(text[b.id], b.p),
        h("td", { class: "n" }, ra < 0 ? "–" : `${ra} → ${rb}`),
      );
    });
    const changed = rows.filter((row) => row.className === "changed").length;
    this.lens.replaceChildren(
      h("caption", {}, `Logit lens: the layer's top token at each position; it changes at ${changed} of ${rows.length}.`),
      h(
        "thead",
        {},
        h("tr", {}, ...["#", "token", "original", "intervened", "rank of the next token"].map((t) => h("th", {}, t))),
      ),
      h("tbody", {}, ...rows),
    );
  }
}

function lensCell(text, p) {
  return h(
    "td",
    {},
    h("span", { class: "tok", dataset: { text }, style: `background:${cividis.css(p)};color:${cividis.ink(p)}` }, visible(text ?? "?")),
    h("span", { class: "p" }, percent(p)),
  );
}

/** An n × n lower-triangular map, one pixel a cell, scaled up by CSS. */
function paint(canvas, n, lut, valueAt) {
  const image = new ImageData(Math.max(n, 1), Math.max(n, 1));
  for (let q = 0; q < n; q++) {
    for (let k = 0; k <= q; k++) {
      const c = Math.round(Math.min(1, Math.max(0, valueAt(q, k))) * 255) * 4;
      image.data.set([lut[c], lut[c + 1], lut[c + 2], 255], (q * n + k) * 4);
    }
  }
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function signed(x) {
  return `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(4)}`;
}
