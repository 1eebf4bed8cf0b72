// Panel 6: residual-stream norms, one small chart per layer: the L2 norm of the stream
// leaving the layer (solid) and entering it (dashed) at each position.

import { h, svg } from "../dom.js";
import { block, decodeTensor } from "../tensors.js";

const WIDTH = 220;
const HEIGHT = 64;

export class NormsPanel {
  constructor(root) {
    this.charts = root.querySelector("[data-testid=norms]");
    this.status = root.querySelector(".norms-status");
  }

  loading() {
    this.charts.dataset.state = "loading";
  }

  clear(message = "") {
    this.charts.replaceChildren();
    this.charts.dataset.state = "empty";
    this.status.textContent = message;
  }

  /** `/inspect`'s `resid_norms`: `input` and `output`, [layers, positions]. */
  show(answer) {
    const input = decodeTensor(answer.resid_norms.input);
    const output = decodeTensor(answer.resid_norms.output);
    this.charts.replaceChildren(
      ...answer.layers.map((layer, l) => chart(layer, block(input, l), block(output, l))),
    );
    this.charts.dataset.state = "ready";
    this.status.textContent = `${input.shape[1]} positions; each chart has its own scale.`;
  }
}

function chart(layer, input, output) {
  const top = Math.max(...input, ...output) || 1;
  const points = (values) =>
    Array.from(values, (v, t) => {
      const x = values.length > 1 ? (t / (values.length - 1)) * (WIDTH - 8) + 4 : WIDTH / 2;
      return `${x.toFixed(1)},${(HEIGHT - 4 - (v / top) * (HEIGHT - 8)).toFixed(1)}`;
    }).join(" ");
  const range = (values) => `${Math.min(...values).toFixed(1)}–${Math.max(...values).toFixed(1)}`;
  return h(
    "figure",
    { class: "norm", dataset: { layer } },
    svg(
      "svg",
      { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
        "aria-label": `layer ${layer}: output norms ${range(output)}, input norms ${range(input)}` },
      svg("polyline", { points: points(input), class: "norm-in" }),
      svg("polyline", { points: points(output), class: "norm-out" }),
      // One position makes a line of one point, which draws nothing: mark it.
      ...(output.length === 1 ? [dot(points(input), "norm-in"), dot(points(output), "norm-out")] : []),
    ),
    h("figcaption", {}, `layer ${layer} · max ${top.toFixed(1)}`),
  );
}

function dot(point, cls) {
  const [cx, cy] = point.split(",");
  return svg("circle", { cx, cy, r: 3, class: `${cls} dot` });
}
