// The viewer's wiring: the API client, the seven panels, and the state they share.
//
// Everything the page asks about a model belongs to that model's "scope": picking another
// model aborts the scope, so no answer about the old model is drawn over the new one, and
// every request names the model its token ids came from.

import { SequenceViews } from "./analysis.js";
import { LlmvizClient } from "./client.js";
import { Comparison } from "./comparison.js";
import { debounce } from "./dom.js";
import { linkNote } from "./link-note.js";
import { AttentionPanel } from "./panels/attention.js";
import { GeneratePanel } from "./panels/generate.js";
import { IntervenePanel } from "./panels/intervene.js";
import { LensPanel } from "./panels/lens.js";
import { ModelPanel } from "./panels/model.js";
import { NormsPanel } from "./panels/norms.js";
import { LoadProgress } from "./panels/progress.js";
import { Notice } from "./panels/notice.js";
import { expectation, PromptPanel } from "./panels/prompt.js";
import { readUrlState, writeUrlState } from "./url-state.js";

const KEY_STORAGE = "llmviz.apiKey";
const TOP_LOGPROBS = 5;
const LIVE_EVERY_LAYER = 64; // up to this many layers × heads, live rows come for every layer
const REMOTE_NOTE =
  "Attention, the logit lens and residual norms are not available for a remote model: " +
  "its server returns tokens and their probabilities only.";

const $ = (selector) => document.querySelector(selector);
const client = new LlmvizClient({ apiKey: localStorage.getItem(KEY_STORAGE) });
const state = {
  listing: null, // GET /models
  modelId: null,
  model: null, // {id, config, signal}: the model in use, once GET /models/config answered
  scope: new AbortController(), // aborted when the page moves to another model
  tokens: null, // /tokenize of the prompt in the box, with its text and model
  stream: null, // AbortController of the running generation
  generation: Promise.resolve(),
  last: null, // {prompt, tokens}: the last generation, to continue from an alternative
  linkCut: {}, // what the link that opened the page left out (url-state.js's `cut`)
};

const notice = new Notice($("[data-testid=error]"), { onKey: useKey });
const model = new ModelPanel($("#model-panel"), { onSelect: (id) => selectModel(id, true) });
const prompt = new PromptPanel($("#prompt-panel"), { onInput: promptChanged, onSubmit: generate });
const output = new GeneratePanel($("#generate-panel"), $(".alternatives"), {
  onGenerate: generate,
  onStop: stop,
  onAlternative: continueFrom,
  onChange: () => saveUrl(),
});
const attention = new AttentionPanel($("#attention-panel"), {
  onNeedLayer: (layer) => views.fetchAttention(layer),
  onChange: () => saveUrl(),
});
const intervene = new IntervenePanel($("#intervene-panel"), {
  onCompare: compare,
  onLayer: (layer) => comparison.inspect(layer),
  onOpen: () => comparison.clear("a saved comparison was opened"),
  currentHead: () => ({ layer: attention.layer, head: attention.head }),
});
const comparison = new Comparison(client, intervene);
const views = new SequenceViews({
  client,
  attempt,
  attention,
  lens: new LensPanel($("#lens-panel")),
  norms: new NormsPanel($("#norms-panel")),
});
// Bars while a model loads for one of this page's calls.
new LoadProgress($("header.top"), () => client.models(), () => client.waiting > 0);
const tokenizeSoon = debounce(tokenize, 150);
const saveUrlSoon = debounce(saveUrl, 300);
let tokenizing = Promise.resolve(null);
let tokenizeTurn = 0;

start();

async function start() {
  const url = readUrlState();
  prompt.value = url.prompt ?? "";
  state.linkCut = url.cut;
  output.setFieldValues(url);
  attention.choose(url);
  state.modelId = url.model ?? null;
  views.clear("Pick a model and type a prompt: attention appears here.");
  await loadModels();
}

/** Run one API call; show its error (and how to retry it) or clear an old one of its kind. */
async function attempt(kind, work, retry, signal = null) {
  try {
    const result = await work();
    if (!signal?.aborted) notice.clear(kind);
    return result;
  } catch (error) {
    // An aborted call's error, or one about a model the page has left, is not news.
    if (error.name !== "AbortError" && !signal?.aborted) notice.show(kind, error, retry);
    return null;
  }
}

async function loadModels() {
  const listing = await attempt("models", () => client.models(), loadModels);
  if (!listing) return;
  state.listing = listing;
  await selectModel(state.modelId ?? listing.default_model, false);
}

/** Use `modelId`; `picked` when the user chose it (then the prompt must suit it). */
async function selectModel(modelId, picked) {
  stop();
  state.scope.abort();
  state.scope = new AbortController();
  const signal = state.scope.signal;
  tokenizeTurn += 1; // a tokenization still running is of the old model
  tokenizing = Promise.resolve(null);
  Object.assign(state, { modelId, model: null, tokens: null, last: null });
  if (state.listing) model.showModels(state.listing, modelId);
  model.clearConfig(`Reading ${modelId}'s description…`);
  prompt.expect(null);
  prompt.clearTokens();
  output.setReady(false);
  intervene.setReady(false);
  comparison.clear("another model was picked");
  output.clear();
  notice.clear();
  views.clear("Pick a model and type a prompt: attention appears here.");
  saveUrl();
  const remote = state.listing?.remote?.find((m) => m.model_id === modelId);
  if (remote) {
    // Another server generates it: no config to read, no internals to draw.
    state.model = { id: modelId, config: null, remote, signal };
    model.showRemote(remote);
    views.clear(REMOTE_NOTE);
    output.setReady(true);
    await tokenize({ picked });
    return;
  }
  const retry = () => selectModel(modelId, picked);
  const config = await attempt("config", () => client.config(modelId, { signal }), retry, signal);
  if (signal.aborted) return; // another model was picked meanwhile
  if (!config) {
    model.clearConfig(`No description of ${modelId}: see the message above.`);
    return;
  }
  state.model = { id: modelId, config, signal };
  model.showConfig(config);
  model.showStatus(state.listing, modelId, config);
  prompt.expect(expectation(modelId, config));
  attention.setShape(config.n_layers, config.n_heads);
  output.setReady(true);
  intervene.setModel(modelId, config);
  if (!performance.getEntriesByName("viewer:interactive").length) {
    performance.mark("viewer:interactive");
  }
  await tokenize({ picked });
}

function promptChanged() {
  state.linkCut = {}; // the prompt is the user's own now, not the link's cut one
  tokenizeSoon();
  saveUrlSoon();
}

function saveUrl() {
  const cut = writeUrlState({
    model: state.modelId,
    prompt: prompt.value,
    ...output.fieldValues(),
    layer: attention.layer,
    head: attention.head,
    view: attention.view,
    cut: state.linkCut,
  });
  prompt.showLinkNote(linkNote(cut, state.linkCut));
}

/** Tokenize the prompt in the box; a newer call supersedes an older one still running. */
function tokenize({ picked = false } = {}) {
  const turn = ++tokenizeTurn;
  tokenizing = tokenizeText(prompt.value, state.model, turn, picked);
  return tokenizing;
}

async function tokenizeText(text, current, turn, picked) {
  if (!current) return null;
  const { signal } = current;
  let answer;
  try {
    answer = await client.tokenize({ model_id: current.id, prompt: text }, { signal });
  } catch (error) {
    if (turn !== tokenizeTurn || signal.aborted || error.name === "AbortError") return null;
    const example = expectation(current.id, current.config)?.example;
    if (picked && error.status === 400 && example && text !== example) {
      // The prompt was typed for another model, and this one cannot read it: use its own.
      prompt.value = example;
      prompt.replaced(`${current.id} cannot read the prompt that was in the box: it holds ` +
        "this model's example now.");
      saveUrl();
      return tokenize();
    }
    notice.show("tokenize", error, tokenize);
    prompt.clearTokens();
    return null;
  }
  if (turn !== tokenizeTurn || signal.aborted) return null;
  notice.clear("tokenize");
  const tokens = { ...answer, text, model: current, seen: { ids: answer.token_ids, labels: answer.tokens } };
  state.tokens = tokens;
  if (current.remote) {
    // A remote model's tokens, as far as its server tells (texts only with a local tokenizer).
    prompt.showRemoteTokens(answer, text);
    return tokens;
  }
  if (answer.count) prompt.showTokens(answer, text);
  else tokens.seen = await startToken(current, answer);
  if (turn !== tokenizeTurn || signal.aborted) return null;
  views.show(current, tokens.seen.ids, tokens.seen.labels);
  return tokens;
}

/**
 * An empty prompt's tokens as the model sees them, {ids, labels}: generation starts from the
 * model's BOS token, so attention, lens and norms show that token.
 */
async function startToken(current, answer) {
  const bos = answer.bos_token_id;
  if (bos === null || bos === undefined) {
    prompt.clearTokens("Empty prompt: this model has no start (BOS) token, so type a prompt.");
    return { ids: [], labels: [] };
  }
  prompt.clearTokens(`Empty prompt: generation starts from the model's start token (id ${bos}).`);
  const body = { model_id: current.id, token_ids: [bos], skip_special_tokens: false };
  const work = () => client.detokenize(body, { signal: current.signal });
  const decoded = await attempt("tokenize", work, tokenize, current.signal);
  return { ids: [bos], labels: [decoded?.text ?? `#${bos}`] };
}

/** The tokens of the prompt now in the box: waits for, or starts, their tokenization. */
async function currentTokens() {
  tokenizeSoon.now();
  const tokens = await tokenizing;
  const fresh = tokens && tokens.text === prompt.value && tokens.model === state.model;
  return fresh ? tokens : tokenize();
}

function generate() {
  if (state.stream || !state.model) return state.generation;
  saveUrlSoon.now(); // the link reproduces what is generated
  const controller = new AbortController();
  state.stream = controller;
  output.setRunning(true);
  state.generation = streamGeneration(controller, state.model).finally(() => {
    if (state.stream === controller) state.stream = null;
    prompt.setBusy(false);
    output.setRunning(state.stream !== null);
    refreshStatus(state.scope.signal);
  });
  return state.generation;
}

async function streamGeneration(controller, current) {
  const tokens = await currentTokens();
  // One signal for both ways a stream ends early: Stop, and another model.
  const signal = AbortSignal.any([controller.signal, current.signal]);
  if (!tokens || signal.aborted || tokens.model !== current) return;
  // A remote model's context is its server's to check: it refuses what does not fit.
  const context = current.remote ? Infinity : current.config.context_length;
  const room = context - Math.max(tokens.count, 1); // an empty prompt starts from BOS
  if (room < 1) {
    const error = new Error(`The prompt's ${tokens.count} tokens fill the model's context (${context}).`);
    notice.show("generate", error);
    return;
  }
  const params = output.params();
  const wanted = params.max_new_tokens ?? 128;
  const body = {
    ...params,
    model_id: current.id,
    prompt: tokens.text,
    max_new_tokens: Math.min(wanted, room),
    details: true,
    top_logprobs: current.remote ? TOP_LOGPROBS : Math.min(TOP_LOGPROBS, current.config.vocab_size),
    return_full_text: false,
  };
  const live = attention.live && !current.remote ? liveLayers(current.config, attention.layer) : null;
  if (live) Object.assign(body, { attention: "last_row", layers: live });
  const seen = tokens.seen; // what the model reads before the first new token
  if (!current.remote) views.show(current, seen.ids, seen.labels); // the stream extends these rows
  prompt.setBusy(true);
  output.begin(room < wanted ? `max_new_tokens limited to ${room} by the context (${context}).` : "");
  const last = { prompt: tokens.text, tokens: [] };
  state.last = last;
  try {
    for await (const event of client.stream(body, { signal })) {
      if (signal.aborted) break; // a model switch: nothing of this stream is drawn any more
      if (event.type === "token") {
        last.tokens.push(event.token);
        output.addToken(event.token);
        if (!current.remote) attention.addToken(event.token.id, event.token.text);
        if (event.token.attention) attention.addLiveRows(live, event.token.attention);
      } else if (event.type === "done") {
        output.addText(event.done.delta);
        output.finish(event.done);
      }
    }
    notice.clear("generate");
  } catch (error) {
    if (current.signal.aborted) return;
    if (error.name === "AbortError") output.stopped();
    else {
      output.failed();
      notice.show("generate", error, generate);
    }
  }
  if (current.signal.aborted) return; // the views belong to another model now
  const made = last.tokens;
  if (made.length && !current.remote) {
    views.show(current, [...seen.ids, ...made.map((t) => t.id)], [...seen.labels, ...made.map((t) => t.text)]);
  }
}

/** Panel 7's comparison of the prompt as the model is and as the interventions change it. */
async function compare() {
  const current = state.model;
  const tokens = await currentTokens();
  if (!current || !tokens || current.remote) return;
  await comparison.run(current, tokens, output.params());
}

function liveLayers(config, selected) {
  const { n_layers: layers, n_heads: heads } = config;
  return layers * heads <= LIVE_EVERY_LAYER ? Array.from({ length: layers }, (_, i) => i) : [selected];
}

function stop() {
  state.stream?.abort();
}

/** Continue from another token: the prompt becomes the text up to it plus that token. */
async function continueFrom(index, alternative) {
  const last = state.last;
  stop();
  await state.generation;
  if (!last || state.last !== last) return;
  const before = last.tokens.slice(0, index).map((t) => t.text).join("");
  prompt.value = last.prompt + before + alternative.text;
  promptChanged();
  tokenize();
  await generate();
}

/** The model's line in GET /models, once our job is no longer counted (see ModelPanel). */
async function refreshStatus(signal) {
  const listing = await model.refreshStatus(client, state.modelId, state.model?.config, {
    signal,
    busy: () => state.stream !== null,
  });
  if (listing) state.listing = listing;
}

function useKey(key, retry) {
  localStorage.setItem(KEY_STORAGE, key);
  client.apiKey = key;
  notice.clear();
  (retry ?? loadModels)();
}
