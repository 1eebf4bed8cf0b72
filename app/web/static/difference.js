// What the interventions change inside the model, for the comparison: one layer's attention
// and logit lens on one token sequence, read by two /inspect calls, as the model is and with
// the interventions. Both read the same tokens, so every difference is the interventions'
// (on different tokens, attention rows would not even line up).

import { decodeTensor } from "./tensors.js";

const TOP_K = 5; // logit-lens candidates kept per position
const DIGITS = 1e5; // weights and probabilities are float16 on the wire: 5 decimals keep them
/** Heads × tokens² above which attention is not compared (a saved file would be tens of MB). */
export const MAX_ATTENTION_CELLS = 4e6;

/**
 * Inspect layer `layer` of `modelId` on `ids` (their texts `labels`) twice.
 * @returns {Promise<object>} `{layer, heads, token_ids, labels, token_text, original,
 *   intervened}`, each side `{attention: [H][T][q + 1] (row q: its weights over keys 0..q),
 *   lens: {ids: [T][k], probs: [T][k], next_token_rank: [T]}}`: plain arrays, as saved.
 * @throws what the client throws (an ApiError, or an AbortError when `signal` aborts)
 */
export async function inspectBoth(client, { modelId, ids, labels, layer, interventions, signal }) {
  const body = {
    model_id: modelId,
    token_ids: ids,
    include: ["logit_lens", "attention"],
    layers: [layer],
    top_k: TOP_K,
    attention: { format: "dense" },
  };
  const [original, intervened] = await Promise.all([
    client.inspect(body, { signal }),
    client.inspect({ ...body, interventions }, { signal }),
  ]);
  return {
    layer,
    heads: original.attention.weights.shape[1],
    token_ids: [...ids],
    labels: [...labels],
    token_text: { ...original.token_text, ...intervened.token_text },
    original: side(original),
    intervened: side(intervened),
  };
}

function side(answer) {
  const weights = decodeTensor(answer.attention.weights); // [1, H, T, T]
  const [, heads, n] = weights.shape;
  const attention = Array.from({ length: heads }, (_, head) =>
    Array.from({ length: n }, (_, q) =>
      Array.from({ length: q + 1 }, (_, k) => round(weights.values[(head * n + q) * n + k])),
    ),
  );
  const ids = decodeTensor(answer.logit_lens.ids); // [1, T, k]
  const probs = decodeTensor(answer.logit_lens.probs);
  const k = ids.shape[2];
  const rows = (tensor, map) => Array.from({ length: n }, (_, t) => Array.from(tensor.values.slice(t * k, (t + 1) * k), map));
  return {
    attention,
    lens: {
      ids: rows(ids, Number),
      probs: rows(probs, round),
      next_token_rank: Array.from(decodeTensor(answer.logit_lens.next_token_rank).values),
    },
  };
}

function round(x) {
  return Math.round(x * DIGITS) / DIGITS;
}
