// The URL holds what reproduces a view: the model, the prompt, the request's fields, and the
// attention layer, head and view. Changes replace the history entry instead of adding one.

const KEYS = ["model", "prompt", "max_new_tokens", "temperature", "top_p", "top_k",
  "repetition_penalty", "seed", "stop", "layer", "head", "view"];

export function readUrlState(search = location.search) {
  const params = new URLSearchParams(search);
  return Object.fromEntries(KEYS.filter((k) => params.has(k)).map((k) => [k, params.get(k)]));
}

export function writeUrlState(state) {
  const params = new URLSearchParams();
  for (const key of KEYS) {
    const value = state[key];
    if (value !== undefined && value !== null && value !== "") params.set(key, value);
  }
  const url = `${location.pathname}?${params}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}
