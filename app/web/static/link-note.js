// What the page's link leaves out, in words: url-state.js keeps a link within URL_BUDGET
// bytes, cutting the prompt and leaving out long fields, and the page says so.

import { URL_BUDGET } from "./url-state.js";

const NAMES = { stop: "the stop strings", model: "the model id" };

/**
 * A sentence for the prompt panel, or "" when the link holds everything.
 * @param {object} cut what the link now in the address bar leaves out (writeUrlState's answer)
 * @param {object} opened what the link that opened the page left out (readUrlState's `cut`)
 */
export function linkNote(cut, opened) {
  const parts = [];
  const length = cut.prompt;
  const kept = [...new URLSearchParams(location.search).get("prompt") ?? ""].length;
  if (length) {
    parts.push(kept ? `only the first ${count(kept)} of the prompt's ${count(length)} characters`
      : `none of the prompt's ${count(length)} characters`);
  }
  const others = Object.keys(cut).filter((k) => k !== "prompt").map((k) => NAMES[k] ?? k);
  if (others.length) parts.push(`not ${others.join(" or ")}`);
  if (!parts.length) return "";
  const opening = Object.keys(opened).length ? "The link that opened this page held" : "This page's link holds";
  return `${opening} ${parts.join(", and ")}: servers refuse longer links, so it is kept under ` +
    `${count(URL_BUDGET)} bytes. Copy the prompt itself to share all of it.`;
}

function count(n) {
  return n.toLocaleString("en");
}
