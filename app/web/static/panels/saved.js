// A saved comparison (panel 7's "Save as JSON" or "Save as a page") read back from a file's
// text, and checked whole before anything is drawn. No imports: a saved page carries it.

export const RUN_FORMAT = "llmviz-compare/1"; // a saved comparison's `format`
const SIDES = ["original", "intervened"];

/**
 * A saved comparison from a file's text: the JSON file, or a saved page (its data is the
 * `llmviz-run` script). Checked enough to draw; throws an Error that says what is wrong.
 */
export function readSaved(text) {
  const json = text.trimStart().startsWith("{")
    ? text
    : new DOMParser().parseFromString(text, "text/html").getElementById("llmviz-run")?.textContent;
  if (json === undefined) throw new Error("neither a saved comparison's JSON nor its page");
  const run = JSON.parse(json);
  if (run?.format !== RUN_FORMAT) throw new Error(`not a saved comparison (${RUN_FORMAT})`);
  checkRun(run);
  return run;
}

/** Throw an Error naming the first part of `run` that cannot be drawn. */
function checkRun(run) {
  const fail = (what) => {
    throw new Error(`its ${what}`);
  };
  const isInt = Number.isInteger;
  const numbers = (list, n) => Array.isArray(list) && list.length === n && list.every((x) => typeof x === "number");
  for (const side of SIDES) {
    const tokens = run[side];
    if (!Array.isArray(tokens)) fail(`“${side}” is not a list of tokens`);
    tokens.forEach((t, i) => {
      if (typeof t?.text !== "string" || !isInt(t.id)) fail(`${side} token ${i} has no text or id`);
    });
  }
  const kinds = ["ablate_head", "ablate_mlp", "steer", "patch"];
  (run.interventions ?? []).forEach((item, i) => {
    if (!kinds.includes(item?.kind) || !isInt(item.layer)) fail(`intervention ${i} is not one the viewer knows`);
  });
  const internals = run.internals;
  if (internals === undefined) return;
  const { layer, heads, labels } = internals ?? {};
  if (!isInt(layer) || !isInt(heads) || heads < 1 || !Array.isArray(labels)) fail("internals lack a layer, heads or labels");
  const n = labels.length;
  for (const side of SIDES) {
    const { attention, lens } = internals[side] ?? {};
    const square = Array.isArray(attention) && attention.length === heads &&
      attention.every((rows) => Array.isArray(rows) && rows.length === n && rows.every((row, q) => numbers(row, q + 1)));
    if (!square) fail(`${side} attention is not [${heads}][${n}][query + 1] numbers`);
    const k = lens?.ids?.[0]?.length;
    const table = (list) => Array.isArray(list) && list.length === n && list.every((row) => numbers(row, k));
    if (!k || !table(lens.ids) || !table(lens.probs) || !numbers(lens.next_token_rank, n)) {
      fail(`${side} logit lens is not ${n} positions of candidates`);
    }
  }
  if (typeof internals.token_text !== "object" || internals.token_text === null) fail("internals lack token texts");
}
