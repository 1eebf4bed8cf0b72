// Panel 1: the model picker (GET /models plus any id), its architecture card and a diagram of
// one layer, both from GET /models/config.

import { h, svg } from "../dom.js";

const DEMO_PREFIX = "llmviz/";
const NORMS = { layernorm: "LayerNorm", rmsnorm: "RMSNorm" };
const POSITIONS = {
  learned: "learned position embeddings, added to the input",
  rotary: "rotary (RoPE), applied to queries and keys",
  alibi: "ALiBi, a bias on attention scores",
};

export class ModelPanel {
  constructor(root, { onSelect }) {
    this.picker = root.querySelector("[data-testid=model]");
    this.free = root.querySelector(".model-free");
    this.status = root.querySelector(".model-status");
    this.card = root.querySelector(".arch");
    this.diagram = root.querySelector(".diagram");
    this.picker.addEventListener("change", () => onSelect(this.picker.value));
    this.free.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = this.free.elements.id.value.trim();
      if (id) onSelect(id);
    });
  }

  /** Fill the picker from `GET /models`'s answer, with `current` selected. */
  showModels(listing, current) {
    const available = listing.available;
    const loaded = listing.loaded.map((m) => m.model_id).filter((id) => !available.includes(id));
    const others = [...new Set([listing.default_model, current])].filter(
      (id) => id && !available.includes(id) && !loaded.includes(id),
    );
    const option = (id) =>
      h("option", { value: id }, id === listing.default_model ? `${id} (default)` : id);
    const group = (label, ids) => (ids.length ? h("optgroup", { label }, ids.map(option)) : null);
    this.picker.replaceChildren(
      group("Demo models", available.filter((id) => id.startsWith(DEMO_PREFIX))),
      group("Model root", available.filter((id) => !id.startsWith(DEMO_PREFIX))),
      group("Loaded", loaded),
      group("Other", others),
    );
    this.picker.value = current;
    this.picker.disabled = false;
  }

  /**
   * Where the model stands on the server: loaded or not, its weights and memory, its work.
   * `memory_bytes` counts every tensor the server holds for the model, the oneDNN-packed
   * copies of its linear layers among them, so the weights' own size comes from the config.
   */
  showStatus(listing, modelId, config = null) {
    const entry = listing?.loaded.find((m) => m.model_id === modelId);
    if (!entry) {
      this.status.textContent = "Not loaded yet: the first request loads it.";
      return;
    }
    const bytes = DTYPE_BYTES[entry.dtype];
    const weights =
      config?.n_params && bytes
        ? `weights ${megabytes(config.n_params * bytes)} (${compact(config.n_params)} parameters × ` +
          `${bytes} bytes); `
        : "";
    const packed = entry.packed_layers
      ? `, with packed copies of ${entry.packed_layers} linear layers for oneDNN`
      : "";
    this.status.textContent =
      `Loaded on ${entry.device} (${entry.dtype}): ${weights}` +
      `${megabytes(entry.memory_bytes)} of tensors in memory${packed}. ` +
      `${entry.active} generating, ${entry.queued} queued, ${entry.generated_tokens} tokens generated so far.`;
  }

  /**
   * Ask GET /models again and show the model's line; returns the listing (null on failure).
   * After a stream ends the server notices the closed connection only at its next token, so
   * while the model still counts a job and `busy()` (a stream of ours) is false, ask again
   * a few times, over about 5 s.
   */
  async refreshStatus(client, modelId, config, { signal, busy }) {
    let listing = null;
    for (const pause of [0, 150, 300, 600, 1200, 2400]) {
      await new Promise((resolve) => setTimeout(resolve, pause));
      if (signal.aborted || busy()) return listing;
      listing = await client.models({ signal }).catch(() => null);
      if (!listing || signal.aborted) return listing;
      this.showStatus(listing, modelId, config);
      if (!listing.loaded.find((m) => m.model_id === modelId)?.active) return listing;
    }
    return listing;
  }

  /** The architecture card and the layer diagram of `GET /models/config`'s answer. */
  showConfig(config) {
    const kv = config.n_kv_heads < config.n_heads ? " (grouped-query)" : "";
    const rows = [
      ["Architecture", `${config.architecture} (${config.family})`],
      ["Layers", config.n_layers],
      ["Heads", `${config.n_heads} query, ${config.n_kv_heads} key/value${kv}`],
      ["Widths", `model ${config.d_model}, head ${config.d_head}, MLP ${config.d_mlp}`],
      ["Vocabulary", config.vocab_size.toLocaleString("en")],
      ["Context", `${config.context_length.toLocaleString("en")} tokens`],
      ["Parameters", `${compact(config.n_params)} (${config.n_params.toLocaleString("en")})`],
      ["Normalization", NORMS[config.norm_type] ?? config.norm_type],
      ["Activation", `${config.act_fn}, ${config.mlp_type} MLP`],
      ["Positions", POSITIONS[config.positional] ?? config.positional],
      ["Embeddings", config.tie_word_embeddings ? "tied to the unembedding" : "untied"],
    ];
    if (config.logit_softcap) rows.push(["Logit soft-cap", config.logit_softcap]);
    this.card.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
    this.diagram.replaceChildren(layerDiagram(config), h("figcaption", {}, caption(config)));
  }

  clearConfig(message = "") {
    this.card.replaceChildren();
    this.diagram.replaceChildren();
    this.status.textContent = message;
  }
}

const DTYPE_BYTES = { float64: 8, float32: 4, float16: 2, bfloat16: 2, int8: 1, uint8: 1 };

function megabytes(n) {
  return `${(n / 1e6).toFixed(1)} MB`;
}

function compact(n) {
  for (const [size, unit] of [[1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
    if (n >= size) return `${(n / size).toFixed(1)} ${unit}`;
  }
  return String(n);
}

function caption(config) {
  return (
    `One of the ${config.n_layers} layers. Each branch reads a normalized copy of the ` +
    `residual stream (width ${config.d_model}) and adds its output back.`
  );
}

/** An SVG of one layer: the residual stream, and the attention and MLP branches on it. */
function layerDiagram(config) {
  const norm = NORMS[config.norm_type] ?? config.norm_type;
  const kv = config.n_kv_heads < config.n_heads ? `${config.n_kv_heads} KV heads` : "";
  const position = { rotary: "RoPE on q, k", alibi: "ALiBi bias" }[config.positional] ?? "";
  const widths = `${config.d_model}→${config.d_mlp}→${config.d_model}`;
  const mlp =
    config.mlp_type === "gated"
      ? ["Gated MLP", `${config.act_fn}(gate) · up`, widths]
      : ["MLP", widths, config.act_fn];
  const attention = ["Attention", `${config.n_heads} heads × ${config.d_head}`, kv || position];
  const y = 28;
  // A branch leaves the stream at x0, runs through its norm and its block, and adds back.
  const branch = (x0, lines) => [
    svg("path", { d: `M${x0} ${y} V100 H${x0 + 10}`, class: "wire" }),
    box(x0 + 10, 90, [norm]),
    svg("path", { d: `M${x0 + 100} 100 H${x0 + 110}`, class: "wire" }),
    box(x0 + 110, 120, lines),
    svg("path", { d: `M${x0 + 230} 100 H${x0 + 250} V${y + 9}`, class: "wire arrow" }),
    plus(x0 + 250, y),
  ];
  return svg(
    "svg",
    { viewBox: "0 0 560 130", role: "img", "aria-label": "Diagram of one layer" },
    svg("defs", {}, svg("marker", { id: "arrowhead", viewBox: "0 0 6 6", refX: 5, refY: 3,
      markerWidth: 6, markerHeight: 6, orient: "auto" }, svg("path", { d: "M0 0 L6 3 L0 6 z" }))),
    svg("path", { d: `M4 ${y} H552`, class: "wire stream arrow" }),
    svg("text", { x: 4, y: y - 10, class: "label" }, "residual stream"),
    ...branch(20, attention),
    ...branch(290, mlp),
  );
}

function box(x, width, lines) {
  const shown = lines.filter(Boolean);
  const line = (text, i) =>
    svg("text", { x: x + width / 2, y: 104 + (i - (shown.length - 1) / 2) * 13 }, text);
  return svg("g", { class: "box" }, svg("rect", { x, y: 76, width, height: 48, rx: 6 }),
    ...shown.map(line));
}

function plus(x, y) {
  return svg("g", { class: "add" }, svg("circle", { cx: x, cy: y, r: 8 }),
    svg("text", { x, y: y + 4 }, "+"));
}
