// The attention panel's head view: lines from each query token (left) to the k keys it
// attends to most (right), drawn on a canvas.

import { clip, visible } from "../dom.js";

// The view fits its rows into the box's height (600 px, viewer.css) down to this height per
// row; more rows than that scroll, and the panel's note says so.
export const LINE_ROW = 16;
const LINE_ROW_MIN = 10;
const LINES_HEIGHT = 600;

/**
 * Draw `rows` (rows[q]: heads × (q + 1) weights, head-major) of one head on `canvas`.
 * `focus` is the picked query, or undefined. Returns the layout: {rows, row (px), scrolls}.
 */
export function drawLines(canvas, rows, { labels, head, k, focus }) {
  const n = rows.length;
  const width = Math.min(canvas.parentElement.clientWidth || 480, 560);
  // As tall as the box allows: every row shows without scrolling, up to LINES_HEIGHT.
  const row = Math.max(LINE_ROW_MIN, Math.min(LINE_ROW, (LINES_HEIGHT - 8) / Math.max(n, 1)));
  const ctx = fit(canvas, width, n * row + 8);
  const left = width * 0.32;
  const right = width * 0.68;
  const y = (i) => 4 + (i + 0.5) * row;
  const alphas = [];
  ctx.font = `${Math.min(12, row - 2)}px ui-monospace, monospace`;
  ctx.textBaseline = "middle";
  for (let q = 0; q < n; q++) {
    if (!rows[q]) continue;
    // Opacity by √weight, as the heatmap's colour, from a floor that stays visible on
    // white; with a token picked, the other tokens' lines step back.
    const strength = focus === undefined || focus === q ? 1 : 0.3;
    for (const [key, w] of strongest(rows[q], head, q, k)) {
      const alpha = strength * (0.3 + 0.7 * Math.sqrt(Math.max(w, 0)));
      alphas.push(alpha);
      ctx.strokeStyle = `rgba(49, 104, 142, ${alpha.toFixed(3)})`;
      ctx.lineWidth = (focus === q ? 2.5 : 1.2) + 1.5 * w;
      ctx.beginPath();
      ctx.moveTo(left + 4, y(q));
      ctx.lineTo(right - 4, y(key));
      ctx.stroke();
    }
  }
  for (let i = 0; i < n; i++) {
    const label = clip(visible(labels[i] ?? ""), 16);
    ctx.fillStyle = focus === i ? "#000" : "#333";
    ctx.textAlign = "right";
    ctx.fillText(label, left, y(i));
    ctx.textAlign = "left";
    ctx.fillText(label, right, y(i));
  }
  canvas.alphas = alphas; // what the tests read back: each drawn line's opacity
  return { rows: n, row, scrolls: n * row + 8 > LINES_HEIGHT };
}

/** The `k` largest weights of one row of one head, as [key, weight], largest first. */
export function strongest(row, head, q, k) {
  const weights = row.subarray(head * (q + 1), (head + 1) * (q + 1));
  const keys = Array.from(weights.keys());
  keys.sort((a, b) => weights[b] - weights[a]);
  return keys.slice(0, k).map((key) => [key, weights[key]]);
}

/** Size a canvas for the screen's pixel density; returns its context in CSS pixels. */
export function fit(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return ctx;
}
