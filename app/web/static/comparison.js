// Panel 7's comparison, as the page runs it: the prompt generated twice at once with the
// same settings and seed (as the model is, and as the interventions change it), then one
// layer's attention and logit lens read with and without the interventions on the original
// run's tokens. A new comparison, another layer or another model aborts what is in flight.

import { inspectBoth, MAX_ATTENTION_CELLS } from "./difference.js";

const TOP_LOGPROBS = 5; // alternatives saved with each token

export class Comparison {
  /**
   * @param {import("./client.js").LlmvizClient} client
   * @param panel the IntervenePanel that shows it
   */
  constructor(client, panel) {
    Object.assign(this, { client, panel });
    this.sequence = null; // {run, model, ids, labels, interventions}: what the internals read
    this.controller = null;
  }

  /**
   * Compare on `model` ({id, config, signal}) the prompt `tokens` (a /tokenize answer with
   * `text` and `seen`), with generation `params`; then inspect the first layer whose
   * attention the interventions change (`firstChangedLayer`).
   */
  async run(model, tokens, params) {
    this.#abort();
    this.sequence = null; // another layer is asked of this comparison's tokens, once they exist
    const signal = this.#signal(model);
    const settings = { ...params, seed: params.seed ?? 0, max_new_tokens: params.max_new_tokens ?? 32 };
    const interventions = this.panel.interventions();
    const run = { model: model.id, prompt: tokens.text, settings, interventions, original: [], intervened: [] };
    this.panel.begin(run);
    const body = {
      ...settings,
      model_id: model.id,
      prompt: tokens.text,
      details: true,
      top_logprobs: Math.min(TOP_LOGPROBS, model.config.vocab_size),
    };
    const side = async (name, extra) => {
      for await (const event of this.client.stream({ ...body, ...extra }, { signal })) {
        if (event.type === "token" && !signal.aborted) this.panel.addToken(name, event.token);
      }
    };
    try {
      await Promise.all([side("original", {}), side("intervened", { interventions })]);
    } catch (error) {
      if (signal.aborted) return; // stopped by whoever aborted it, who says why
      this.controller.abort(); // one side failed: the other stops too
      this.panel.finish(error);
      return;
    }
    this.panel.finish();
    this.sequence = {
      run,
      model,
      ids: [...tokens.seen.ids, ...run.original.map((t) => t.id)],
      labels: [...tokens.seen.labels, ...run.original.map((t) => t.text)],
      interventions,
    };
    await this.inspect(firstChangedLayer(interventions, model.config.n_layers), signal);
  }

  /** Read `layer` of the last comparison's sequence with and without its interventions. */
  async inspect(layer, signal = null) {
    const sequence = this.sequence;
    if (!sequence) return;
    if (!signal) {
      this.#abort();
      signal = this.#signal(sequence.model);
    }
    const { model, ids, labels, interventions } = sequence;
    if (!ids.length) return;
    if (model.config.n_heads * ids.length ** 2 > MAX_ATTENTION_CELLS) {
      this.panel.internalsFailed(`${ids.length} tokens are too many to compare attention densely.`);
      return;
    }
    this.panel.internalsLoading(layer);
    try {
      const internals = await inspectBoth(this.client, { modelId: model.id, ids, labels, layer, interventions, signal });
      // Drawn only over the comparison it belongs to (the panel may show an opened file now).
      if (!signal.aborted && this.panel.run === sequence.run) this.panel.showInternals(internals, model.config.n_layers);
    } catch (error) {
      if (!signal.aborted) this.panel.internalsFailed(`The internals could not be read: ${error.message}`);
    }
  }

  /** Nothing of the comparison under way goes on (another model, or a file opened). */
  clear(reason) {
    this.#abort();
    this.sequence = null;
    this.panel.stopped(reason);
  }

  #abort() {
    this.controller?.abort();
    this.controller = new AbortController();
  }

  #signal(model) {
    return AbortSignal.any([model.signal, this.controller.signal]);
  }
}

/**
 * The first layer whose attention weights `interventions` change: a steer or a patch at L
 * changes the stream entering L, so L's attention; an ablation at L changes L's output, so
 * attention from L + 1 on (the last layer's, if there is no later one).
 */
export function firstChangedLayer(interventions, layers) {
  const first = (item) => (item.kind === "steer" || item.kind === "patch" ? item.layer : item.layer + 1);
  return Math.min(layers - 1, ...interventions.map(first));
}
