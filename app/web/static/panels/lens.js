// Panel 5: the logit lens, a grid of layers × positions. Each cell is the layer's top token at
// that position, coloured by its probability, with the rank of the token that actually comes
// next; the last row is each position's prediction depth.

import { cividis } from "../colors.js";
import { clip, h, percent, visible } from "../dom.js";
import { decodeTensor } from "../tensors.js";

export class LensPanel {
  constructor(root) {
    this.grid = root.querySelector("[data-testid=lens]");
    this.status = root.querySelector(".lens-status");
    this.summary = "";
    // A grid wider than its panel scrolls sideways inside it: the edges that hide columns
    // fade (viewer.css), and the status says how to see them.
    this.grid.addEventListener("scroll", () => this.#showOverflow(), { passive: true });
    new ResizeObserver(() => this.#showOverflow()).observe(this.grid);
  }

  loading(count) {
    this.status.textContent = `Reading the logit lens of ${count} tokens…`;
    this.grid.dataset.state = "loading";
  }

  clear(message = "Type a prompt: each layer's prediction appears here.") {
    this.status.textContent = message;
    this.grid.replaceChildren();
    this.grid.dataset.state = "empty";
  }

  /** `/inspect`'s `logit_lens` (all layers) for tokens whose texts are `labels`. */
  show(answer, labels) {
    const ids = decodeTensor(answer.logit_lens.ids);
    const probs = decodeTensor(answer.logit_lens.probs);
    const ranks = decodeTensor(answer.logit_lens.next_token_rank);
    const [layers, positions, k] = ids.shape;
    const top = (l, t) => ids.values[(l * positions + t) * k];
    const chance = (l, t) => probs.values[(l * positions + t) * k];
    const text = (id) => answer.token_text[id] ?? `#${id}`;
    const depth = predictionDepth(layers, positions, top);

    const cell = (l, t) => {
      const p = chance(l, t);
      const rank = ranks.values[l * positions + t];
      const next = t + 1 < labels.length ? `; the next token ${JSON.stringify(labels[t + 1])} ranks ${rank}` : "";
      return h(
        "td",
        {
          style: `background:${cividis.css(p)};color:${cividis.ink(p)}`,
          title: `layer ${answer.layers[l]}, position ${t}: top ${JSON.stringify(text(top(l, t)))} ${percent(p)}${next}`,
        },
        clip(visible(text(top(l, t))), 12),
        rank >= 0 ? h("sub", {}, String(rank)) : null,
      );
    };
    const range = Array.from({ length: positions }, (_, t) => t);
    this.grid.replaceChildren(
      h(
        "table",
        {},
        h("caption", {}, `Top token of each layer at each of the ${positions} positions`),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "layer"),
          range.map((t) => {
            const label = visible(labels[t] ?? "");
            return h("th", { scope: "col", title: `position ${t}: ${label}` }, clip(label, 12));
          }))),
        h(
          "tbody",
          {},
          Array.from({ length: layers }, (_, l) =>
            h("tr", { dataset: { layer: answer.layers[l] } },
              h("th", { scope: "row" }, String(answer.layers[l])), range.map((t) => cell(l, t))),
          ),
          h("tr", { class: "depth", dataset: { row: "depth" } },
            h("th", { scope: "row", title: "prediction depth" }, "depth"),
            range.map((t) => h("td", {}, String(answer.layers[depth[t]])))),
        ),
      ),
    );
    this.grid.dataset.state = "ready";
    this.summary = `${layers} layers × ${positions} positions.`;
    this.#showOverflow();
  }

  #showOverflow() {
    if (this.grid.dataset.state !== "ready") return;
    const { scrollLeft, scrollWidth, clientWidth } = this.grid;
    const wider = scrollWidth > clientWidth + 1;
    this.grid.classList.toggle("more-left", wider && scrollLeft > 1);
    this.grid.classList.toggle("more-right", wider && scrollLeft + clientWidth < scrollWidth - 1);
    const shown = Math.round((clientWidth / scrollWidth) * 100);
    this.status.textContent = wider
      ? `${this.summary} The grid is wider than this panel (about ${shown}% shows): scroll it ` +
        "sideways (Shift+wheel, or focus it and use the arrow keys) for the other positions."
      : this.summary;
  }
}

/** Per position, the first layer from which the top token is the final layer's, to the end. */
function predictionDepth(layers, positions, top) {
  return Array.from({ length: positions }, (_, t) => {
    let depth = layers - 1;
    while (depth > 0 && top(depth - 1, t) === top(layers - 1, t)) depth--;
    return depth;
  });
}
