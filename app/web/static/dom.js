// Small helpers for building the page without a framework.

const SVG_NS = "http://www.w3.org/2000/svg";

/** `h("p", {class: "x", onclick: f}, "text", child)`: an element with attributes and children. */
export function h(tag, attributes = {}, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** The same for SVG elements. */
export function svg(tag, attributes = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attributes, children);
}

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

/** A token's text with its whitespace made visible: spaces, tabs and line breaks. */
export function visible(text) {
  if (text === "") return "∅"; // part of a character that a later token completes
  return text.replaceAll(" ", "·").replaceAll("\t", "→").replaceAll("\r", "␍").replaceAll("\n", "↵");
}

/** `text` cut to `n` characters, with an ellipsis where something was cut (`<|endof…`). */
export function clip(text, n) {
  const chars = [...text]; // by code point: an emoji is not cut in half
  return chars.length <= n ? text : `${chars.slice(0, n - 1).join("")}…`;
}

/** A probability as a percentage that stays informative near 0. */
export function percent(p) {
  return p >= 0.001 ? `${(p * 100).toFixed(1)}%` : `${(p * 100).toExponential(0)}%`;
}

/** Call `f` once calls have stopped for `ms`; `.now()` runs a pending call at once. */
export function debounce(f, ms) {
  let timer = null;
  let pending = null;
  const debounced = (...args) => {
    pending = args;
    clearTimeout(timer);
    timer = setTimeout(() => debounced.now(), ms);
  };
  debounced.now = () => {
    clearTimeout(timer);
    if (pending === null) return undefined;
    const args = pending;
    pending = null;
    return f(...args);
  };
  return debounced;
}

/**
 * One tab stop for a long row of items (token chips, output tokens): Tab enters the row,
 * arrow keys, Home and End move within it.
 */
export function rovingFocus(container, selector) {
  container.addEventListener("keydown", (event) => {
    const items = [...container.querySelectorAll(selector)];
    const at = items.indexOf(event.target);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1,
      Home: 0, End: items.length - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    const next = items[Math.max(0, Math.min(items.length - 1, to))];
    event.target.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
}
