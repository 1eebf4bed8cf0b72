// The URL holds what reproduces a view: the model, the prompt, the request's fields, and the
// attention layer, head and view. Changes replace the history entry instead of adding one.
//
// A link has to fit what servers accept on a request line: gunicorn refuses one over 4,094
// bytes (its `limit_request_line`), nginx one over its 8 KB header buffer, and many proxies,
// chat apps and older tools cut links near 2,000 characters. So the page keeps the link (path
// and query) within URL_BUDGET bytes: a prompt that does not fit is cut, long stop strings or
// a long model id are left out, and `cut` tells the page that opens the link what is missing.

export const URL_BUDGET = 2000;

const KEYS = ["model", "prompt", "max_new_tokens", "temperature", "top_p", "top_k",
  "repetition_penalty", "seed", "stop", "layer", "head", "view"];
// Written last, into whatever room the other fields leave: the prompt may be cut to a prefix;
// stop strings, cut, would stop at other texts, so they are left out whole.
const LAST = ["stop", "prompt"];

/**
 * The fields of the page's URL, plus `cut`: what the link that opened the page did not hold,
 * as {prompt: its full length in characters, or absent; stop: true, or absent; ...}.
 */
export function readUrlState(search = location.search) {
  const params = new URLSearchParams(search);
  const state = Object.fromEntries(KEYS.filter((k) => params.has(k)).map((k) => [k, params.get(k)]));
  state.cut = parseCut(params.get("cut"));
  return state;
}

/**
 * Write `state` (the KEYS, and `cut` carried over from the link that opened the page) into the
 * URL, within URL_BUDGET bytes. Returns what the link leaves out, in readUrlState's `cut` form.
 */
export function writeUrlState(state) {
  const params = new URLSearchParams();
  const cut = { ...(state.cut ?? {}) };
  const fits = () => urlOf(params, cut).length <= URL_BUDGET;
  for (const key of KEYS.filter((k) => !LAST.includes(k))) {
    const value = present(state[key]);
    if (value === null) continue;
    params.set(key, value);
    if (!fits()) {
      params.delete(key);
      cut[key] = true;
    }
  }
  const stop = present(state.stop);
  if (stop !== null) {
    params.set("stop", stop);
    if (!fits()) {
      params.delete("stop");
      cut.stop = true;
    }
  }
  const prompt = present(state.prompt);
  if (prompt !== null) writePrompt(params, prompt, cut, fits);
  const url = urlOf(params, cut);
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
  return cut;
}

/** The longest prefix of the prompt (whole code points) that keeps the link in its budget. */
function writePrompt(params, prompt, cut, fits) {
  params.set("prompt", prompt);
  if (fits()) return;
  cut.prompt = Math.max(cut.prompt ?? 0, [...prompt].length);
  const points = [...prompt];
  let [low, high] = [0, points.length]; // low fits, high does not
  while (high - low > 1) {
    const middle = (low + high) >> 1;
    params.set("prompt", points.slice(0, middle).join(""));
    if (fits()) low = middle;
    else high = middle;
  }
  if (low) params.set("prompt", points.slice(0, low).join(""));
  else params.delete("prompt");
}

function urlOf(params, cut) {
  const marks = Object.entries(cut).map(([k, v]) => (v === true ? k : `${k}:${v}`));
  const query = new URLSearchParams(params);
  if (marks.length) query.set("cut", marks.join(","));
  return `${location.pathname}?${query}`;
}

function present(value) {
  return value === undefined || value === null || value === "" ? null : String(value);
}

function parseCut(text) {
  const cut = {};
  for (const mark of (text ?? "").split(",").filter(Boolean)) {
    const [key, length] = mark.split(":");
    if (KEYS.includes(key)) cut[key] = length && /^\d+$/.test(length) ? Number(length) : true;
  }
  return cut;
}
