// Panel 4: attention of one layer and head, as a query × key heatmap or as lines between
// tokens (the k strongest per query, so long prompts stay readable). While a stream runs,
// each new token's attention row is added as it arrives.
//
// Rows are kept per layer: rows[q] is a Float32Array of heads × (q + 1) weights (keys 0..q,
// head-major). Causal attention makes the rows of a prefix the same in any longer sequence,
// so live rows and a later /inspect of the whole text fit together.

import { viridis } from "../colors.js";
import { clip, h, visible } from "../dom.js";
import { block, decodeTensor } from "../tensors.js";
import { drawLines, fit, LINE_ROW, strongest } from "./attention-lines.js";

const LABELLED = 40; // up to this many tokens, the heatmap names them on its axes
const TICKS = 24; // beyond that, its axes number positions: one every ~1/TICKS of the side
const MASKED = [242, 242, 242, 255]; // future keys, which a causal model never attends to
const UNKNOWN = [204, 204, 204, 255]; // rows not received yet

export class AttentionPanel {
  constructor(root, { onNeedLayer, onChange }) {
    this.layerSelect = root.querySelector(".layer");
    this.headSelect = root.querySelector(".head");
    this.viewSelect = root.querySelector(".view");
    this.kInput = root.querySelector(".top-k");
    this.liveBox = root.querySelector(".live");
    this.status = root.querySelector(".attention-status");
    this.heatmap = root.querySelector("[data-testid=attention]");
    this.lines = root.querySelector(".lines");
    this.readout = root.querySelector(".readout");
    this.note = root.querySelector(".heatmap-note");
    this.onNeedLayer = onNeedLayer;
    this.reset([], []);
    const redraw = () => {
      this.#needLayer();
      this.#render();
      onChange();
    };
    for (const input of [this.layerSelect, this.headSelect, this.viewSelect, this.kInput]) {
      input.addEventListener("change", redraw);
    }
    this.#wirePointer(this.heatmap, (x, y) => this.#heatmapCell(x, y));
    this.#wirePointer(this.lines, (x, y) => this.#lineOf(x, y));
    this.heatmap.addEventListener("keydown", (event) => this.#key(event, true));
    this.lines.addEventListener("keydown", (event) => this.#key(event, false));
    new ResizeObserver(() => this.#render()).observe(root.querySelector(".canvas-box"));
  }

  get layer() {
    return this.pending?.layer ?? (Number(this.layerSelect.value) || 0);
  }

  get head() {
    return this.pending?.head ?? (Number(this.headSelect.value) || 0);
  }

  get live() {
    return this.liveBox.checked;
  }

  get view() {
    return this.viewSelect.value;
  }

  /** The model's shape: the layer and head pickers. */
  setShape(layers, heads) {
    const keep = [this.layer, this.head];
    const options = (n, label) =>
      Array.from({ length: n }, (_, i) => h("option", { value: i }, `${label} ${i}`));
    this.layerSelect.replaceChildren(...options(layers, "layer"));
    this.headSelect.replaceChildren(...options(heads, "head"));
    this.layerSelect.value = String(Math.min(keep[0], layers - 1));
    this.headSelect.value = String(Math.min(keep[1], heads - 1));
    this.pending = null;
  }

  /** Restore the layer, head and view from the URL (applied once the shape is known). */
  choose({ layer, head, view }) {
    this.pending = { layer: Number(layer) || 0, head: Number(head) || 0 };
    if (view === "lines" || view === "heatmap") this.viewSelect.value = view;
  }

  /** A new token sequence. Rows of the positions it shares with the last one stay. */
  reset(ids, labels) {
    const shared = Math.min(this.ids?.length ?? 0, ids.length);
    const agree = this.ids?.slice(0, shared).every((id, i) => id === ids[i]);
    if (!agree) this.rows = new Map();
    for (const rows of this.rows.values()) rows.length = Math.min(rows.length, ids.length);
    if (!agree || (this.cursor && this.cursor.q >= ids.length)) {
      // The readout names positions of the old sequence: "Query 43" means nothing now.
      this.cursor = null;
      this.readout.textContent = "";
    }
    this.ids = [...ids];
    this.labels = [...labels];
    this.complete = new Set(); // layers whose every row came from /inspect of `ids`
    this.requested = new Set();
    this.#needLayer();
    this.#render();
  }

  /** A streamed token: the next position of the sequence. */
  addToken(id, text) {
    this.ids.push(id);
    this.labels.push(text);
  }

  /** A stream's live rows: `tensor` [layers, heads, keys] for the given layer indices. */
  addLiveRows(layers, tensor) {
    const decoded = decodeTensor(tensor);
    const q = decoded.shape[2] - 1;
    layers.forEach((layer, i) => {
      this.#rowsOf(layer)[q] = block(decoded, i).slice();
      this.complete.delete(layer);
    });
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = null;
        this.#render();
      });
    }
  }

  /** `/inspect`'s attention for one layer (dense, or top-k with indices) of the current ids. */
  showInspect(layer, attention) {
    const start = performance.now();
    const weights = decodeTensor(attention.weights);
    const indices = attention.indices ? decodeTensor(attention.indices) : null;
    const [, heads, n, width] = weights.shape;
    const rows = this.#rowsOf(layer);
    for (let q = 0; q < n; q++) {
      const row = new Float32Array(heads * (q + 1));
      for (let head = 0; head < heads; head++) {
        const at = (head * n + q) * width;
        if (!indices) {
          row.set(weights.values.subarray(at, at + q + 1), head * (q + 1));
          continue;
        }
        for (let j = 0; j < width; j++) {
          const key = indices.values[at + j];
          if (key >= 0) row[head * (q + 1) + key] = weights.values[at + j];
        }
      }
      rows[q] = row;
    }
    if (rows.length === n) this.complete.add(layer); // no live rows beyond /inspect's
    this.format = indices ? `the ${width} strongest keys of each row` : "full matrices";
    if (layer === this.layer) this.#render();
    performance.measure("attention:render", { start });
  }

  clear(message) {
    this.reset([], []);
    this.status.textContent = message;
  }

  #rowsOf(layer) {
    if (!this.rows.has(layer)) this.rows.set(layer, []);
    return this.rows.get(layer);
  }

  #needLayer() {
    const layer = this.layer;
    if (this.ids.length && !this.complete.has(layer) && !this.requested.has(layer)) {
      this.requested.add(layer);
      this.onNeedLayer(layer);
    }
  }

  #render() {
    const lines = this.view === "lines";
    this.heatmap.hidden = lines;
    this.lines.hidden = !lines;
    this.kInput.closest("label").hidden = !lines;
    const rows = this.rows.get(this.layer) ?? [];
    const n = rows.length;
    const from = this.complete.has(this.layer) ? "inspect" : n ? "live" : "none";
    this.status.textContent = !n
      ? "Type a prompt: its attention appears here."
      : `Layer ${this.layer}, head ${this.head}: ${n} tokens, ` +
        (from === "inspect" ? `from /inspect (${this.format}).` : "live rows from the stream.");
    if (lines) this.#drawLines(rows);
    else this.#drawHeatmap(rows, from);
    this.note.textContent = this.#note(lines, n);
    this.note.hidden = !this.note.textContent;
  }

  /** What the drawing leaves out, and how to read it anyway. */
  #note(lines, n) {
    if (!lines && n > LABELLED) {
      return `Over ${LABELLED} tokens the axes number positions instead of naming tokens: ` +
        "hover a cell, or focus the map and use the arrow keys, to read its tokens.";
    }
    if (lines && this.layout?.scrolls) {
      return `The ${n} rows are taller than the view: scroll it for the rest, or focus it ` +
        "and use the arrow keys.";
    }
    return "";
  }

  #drawHeatmap(rows, from) {
    const start = performance.now();
    const n = rows.length;
    const head = this.head;
    const values = new Float32Array(n * n);
    const image = new ImageData(Math.max(n, 1), Math.max(n, 1));
    const pixels = image.data;
    const lut = viridis.lut;
    for (let q = 0; q < n; q++) {
      const row = rows[q];
      for (let k = 0; k < n; k++) {
        const p = (q * n + k) * 4;
        if (!row) pixels.set(UNKNOWN, p);
        else if (k > q) pixels.set(MASKED, p);
        else {
          const w = row[head * (q + 1) + k];
          values[q * n + k] = w;
          const c = Math.round(Math.sqrt(Math.max(w, 0)) * 255) * 4;
          pixels[p] = lut[c];
          pixels[p + 1] = lut[c + 1];
          pixels[p + 2] = lut[c + 2];
          pixels[p + 3] = 255;
        }
      }
    }
    this.bitmap ??= document.createElement("canvas");
    this.bitmap.width = image.width;
    this.bitmap.height = image.height;
    this.bitmap.getContext("2d").putImageData(image, 0, 0);
    // What the test and other code read back: exactly the drawn weights.
    this.heatmap.matrix = { layer: this.layer, head, size: n, values, ids: this.ids.slice(0, n), source: from };
    Object.assign(this.heatmap.dataset, { layer: this.layer, head, size: n, source: from });
    this.#paintHeatmap();
    performance.measure("attention:draw", { start });
  }

  /** Scale the bitmap onto the canvas, with labels, cell values and the cursor. */
  #paintHeatmap() {
    const n = this.heatmap.matrix.size;
    const side = Math.min(this.heatmap.parentElement.clientWidth || 480, 560);
    const margin = !n ? 0 : n <= LABELLED ? 64 : 34;
    const cell = n ? (side - margin) / n : 0;
    const ctx = fit(this.heatmap, side, side);
    this.layout = { margin, cell, n };
    if (!n) return;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.bitmap, margin, margin, cell * n, cell * n);
    const values = this.heatmap.matrix.values;
    ctx.font = "11px ui-monospace, monospace";
    if (n > LABELLED) this.#positionTicks(ctx, margin, cell, n);
    else if (margin) {
      ctx.fillStyle = "#222";
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (let i = 0; i < n; i++) {
        const label = clip(visible(this.labels[i] ?? ""), 8);
        ctx.fillText(label, margin - 4, margin + (i + 0.5) * cell);
        ctx.save();
        ctx.translate(margin + (i + 0.5) * cell, margin - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(label, 0, 0);
        ctx.restore();
      }
    }
    if (cell >= 28) {
      ctx.textAlign = "center";
      for (let q = 0; q < n; q++) {
        for (let k = 0; k <= q; k++) {
          const w = values[q * n + k];
          ctx.fillStyle = viridis.ink(Math.sqrt(w));
          ctx.fillText(w.toFixed(2), margin + (k + 0.5) * cell, margin + (q + 0.5) * cell);
        }
      }
    }
    if (this.cursor && this.cursor.q < n) {
      const { q, k } = this.cursor;
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(margin + k * cell, margin + q * cell, Math.max(cell, 3), Math.max(cell, 3));
      ctx.strokeStyle = "#000";
      ctx.strokeRect(margin + k * cell - 2, margin + q * cell - 2, Math.max(cell, 3) + 4, Math.max(cell, 3) + 4);
    }
  }

  /** Position numbers along both axes of a heatmap too dense to name its tokens. */
  #positionTicks(ctx, margin, cell, n) {
    const step = niceStep(n / TICKS);
    ctx.fillStyle = "#222";
    ctx.font = "10px ui-monospace, monospace";
    for (let i = 0; i < n; i += step) {
      const at = margin + (i + 0.5) * cell;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      ctx.fillText(String(i), margin - 3, at);
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      ctx.fillText(String(i), at, margin - 3);
    }
  }

  #drawLines(rows) {
    const k = Math.max(1, Number(this.kInput.value) || 3);
    const focus = this.cursor?.q;
    this.layout = drawLines(this.lines, rows, { labels: this.labels, head: this.head, k, focus });
  }

  #heatmapCell(x, y) {
    const { margin, cell, n } = this.layout ?? {};
    if (!cell) return null;
    const q = Math.floor((y - margin) / cell);
    const k = Math.floor((x - margin) / cell);
    return q >= 0 && q < n && k >= 0 && k <= q ? { q, k } : null;
  }

  #lineOf(x, y) {
    const q = Math.floor((y - 4) / (this.layout?.row ?? LINE_ROW));
    return q >= 0 && q < (this.layout?.rows ?? 0) ? { q, k: q } : null;
  }

  #wirePointer(canvas, locate) {
    canvas.addEventListener("mousemove", (event) => {
      const at = locate(event.offsetX, event.offsetY);
      if (at) this.#moveCursor(at);
    });
  }

  #key(event, heatmap) {
    const n = this.rows.get(this.layer)?.length ?? 0;
    if (!n) return;
    const { q, k } = this.cursor ?? { q: n - 1, k: 0 };
    const moves = {
      ArrowUp: [q - 1, k],
      ArrowDown: [q + 1, k],
      ArrowLeft: [q, k - 1],
      ArrowRight: [q, k + 1],
      Home: [q, 0],
      End: [q, q],
      PageUp: [q - 10, k],
      PageDown: [q + 10, k],
    };
    if (!moves[event.key]) return;
    event.preventDefault();
    const row = Math.min(n - 1, Math.max(0, moves[event.key][0]));
    const key = heatmap ? Math.min(row, Math.max(0, moves[event.key][1])) : row;
    this.#moveCursor({ q: row, k: key });
  }

  #moveCursor(at) {
    this.cursor = at;
    const rows = this.rows.get(this.layer) ?? [];
    const row = rows[at.q];
    const label = (i) => JSON.stringify(this.labels[i] ?? "");
    if (!row) {
      this.readout.textContent = "";
    } else if (this.view === "lines") {
      const top = strongest(row, this.head, at.q, 3)
        .map(([key, w]) => `${label(key)} ${w.toFixed(3)}`)
        .join(", ");
      this.readout.textContent = `Token ${at.q} ${label(at.q)} attends most to ${top}.`;
    } else {
      const w = row[this.head * (at.q + 1) + at.k];
      this.readout.textContent =
        `Query ${at.q} ${label(at.q)} → key ${at.k} ${label(at.k)}: ${w.toFixed(4)}`;
    }
    if (this.view === "lines") this.#drawLines(rows);
    else this.#paintHeatmap();
  }
}

/** A round step (1, 2, 5, 10, 20, 50, ...) of at least `raw`. */
function niceStep(raw) {
  for (let power = 1; ; power *= 10) {
    for (const unit of [1, 2, 5]) if (unit * power >= raw) return unit * power;
  }
}
