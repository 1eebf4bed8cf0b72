// Attention, logit lens and residual norms of one token sequence of one model: what /inspect
// computes for exactly the tokens the model saw. Each sequence carries its model: a request
// never pairs one model with another's token ids, and a new sequence (or another model)
// aborts the old one's calls, so an answer for it that still arrives is dropped, not drawn.

const DENSE_BYTES = 8e6; // one layer's full float16 matrices up to this size; top-k beyond

export class SequenceViews {
  /**
   * @param {object} parts
   * @param {import("./client.js").LlmvizClient} parts.client
   * @param {(kind, work, retry, signal) => Promise<any>} parts.attempt runs a call, shows its error
   * @param parts.attention AttentionPanel, parts.lens LensPanel, parts.norms NormsPanel
   */
  constructor({ client, attempt, attention, lens, norms }) {
    Object.assign(this, { client, attempt, attention, lens, norms });
    this.sequence = null; // {model, ids, labels, signal}
    this.controller = null;
  }

  /**
   * Show `ids` (token texts `labels`) of `model`: {id, config, signal}, whose `signal` aborts
   * when the page moves to another model.
   */
  show(model, ids, labels) {
    const shown = this.sequence;
    if (shown?.model === model && sameIds(shown.ids, ids)) return;
    this.controller?.abort();
    this.controller = new AbortController();
    const signal = AbortSignal.any([model.signal, this.controller.signal]);
    this.sequence = { model, ids: [...ids], labels: [...labels], signal };
    this.attention.reset(ids, labels); // asks for its layer through fetchAttention
    if (ids.length) this.#fetchLens();
    else {
      this.lens.clear();
      this.norms.clear();
    }
  }

  /** Nothing shown: abort what is in flight. */
  clear(message) {
    this.controller?.abort();
    this.sequence = null;
    this.attention.clear(message);
    this.lens.clear();
    this.norms.clear();
  }

  /** Is `model`'s sequence `ids` what the views show? */
  shows(model, ids) {
    return this.sequence?.model === model && sameIds(this.sequence.ids, ids);
  }

  async #fetchLens() {
    const sequence = this.sequence;
    const { model, ids, labels, signal } = sequence;
    this.lens.loading(ids.length);
    this.norms.loading();
    const body = { model_id: model.id, token_ids: ids, include: ["logit_lens", "resid_norms"], top_k: 1 };
    const retry = () => this.sequence === sequence && this.#fetchLens();
    const answer = await this.attempt("inspect", () => this.client.inspect(body, { signal }), retry, signal);
    if (!answer || signal.aborted) return;
    this.lens.show(answer, labels);
    this.norms.show(answer);
  }

  /** One layer's attention for the attention panel (it asks for each layer it shows). */
  async fetchAttention(layer) {
    const sequence = this.sequence;
    if (!sequence?.ids.length) return;
    const { model, ids, signal } = sequence;
    const dense = model.config.n_heads * ids.length ** 2 * 2 <= DENSE_BYTES;
    const body = {
      model_id: model.id,
      token_ids: ids,
      include: ["attention"],
      layers: [layer],
      attention: dense ? { format: "dense" } : { format: "topk", k: 32 },
    };
    const retry = () => this.sequence === sequence && this.fetchAttention(layer);
    const work = () => this.client.inspect(body, { signal });
    const answer = await this.attempt("inspect", work, retry, signal);
    if (answer && !signal.aborted) this.attention.showInspect(layer, answer.attention);
  }
}

function sameIds(a, b) {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}
