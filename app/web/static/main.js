// The viewer's wiring: the API client, the six panels, and the state they share.

import { LlmvizClient } from "./client.js";
import { debounce } from "./dom.js";
import { AttentionPanel } from "./panels/attention.js";
import { GeneratePanel } from "./panels/generate.js";
import { LensPanel } from "./panels/lens.js";
import { ModelPanel } from "./panels/model.js";
import { NormsPanel } from "./panels/norms.js";
import { LoadProgress } from "./panels/progress.js";
import { Notice } from "./panels/notice.js";
import { PromptPanel } from "./panels/prompt.js";
import { readUrlState, writeUrlState } from "./url-state.js";

const KEY_STORAGE = "llmviz.apiKey";
const TOP_LOGPROBS = 5;
const LIVE_EVERY_LAYER = 64; // up to this many layers × heads, live rows come for every layer
const DENSE_BYTES = 8e6; // one layer's full float16 matrices up to this size; top-k beyond

const $ = (selector) => document.querySelector(selector);
const client = new LlmvizClient({ apiKey: localStorage.getItem(KEY_STORAGE) });
const state = {
  listing: null, // GET /models
  modelId: null,
  config: null, // GET /models/config of modelId
  tokens: null, // /tokenize of the prompt in the box, with its text and model
  sequence: null, // {modelId, ids, labels}: what attention, lens and norms show
  analysis: null, // AbortController of the sequence's /inspect calls
  stream: null, // AbortController of the running generation
  generation: Promise.resolve(),
  last: null, // {prompt, tokens}: the last generation, to continue from an alternative
};

const notice = new Notice($("[data-testid=error]"), { onKey: useKey });
const model = new ModelPanel($("#model-panel"), { onSelect: selectModel });
const prompt = new PromptPanel($("#prompt-panel"), { onInput: promptChanged, onSubmit: generate });
const output = new GeneratePanel($("#generate-panel"), $(".alternatives"), {
  onGenerate: generate,
  onStop: stop,
  onAlternative: continueFrom,
  onChange: () => saveUrl(),
});
const attention = new AttentionPanel($("#attention-panel"), {
  onNeedLayer: fetchAttention,
  onChange: () => saveUrl(),
});
const lens = new LensPanel($("#lens-panel"));
const norms = new NormsPanel($("#norms-panel"));
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
  output.setFieldValues(url);
  attention.choose(url);
  state.modelId = url.model ?? null;
  clearViews();
  await loadModels();
}

/** Run one API call; show its error (and how to retry it) or clear an old one of its kind. */
async function attempt(kind, work, retry) {
  try {
    const result = await work();
    notice.clear(kind);
    return result;
  } catch (error) {
    if (error.name !== "AbortError") notice.show(kind, error, retry);
    return null;
  }
}

async function loadModels() {
  const listing = await attempt("models", () => client.models(), loadModels);
  if (!listing) return;
  state.listing = listing;
  await selectModel(state.modelId ?? listing.default_model);
}

async function selectModel(modelId) {
  stop();
  state.modelId = modelId;
  state.config = null;
  if (state.listing) model.showModels(state.listing, modelId);
  output.setReady(false);
  clearViews();
  saveUrl();
  const config = await attempt("config", () => client.config(modelId), () => selectModel(modelId));
  if (state.modelId !== modelId) return; // another model was picked meanwhile
  if (!config) {
    model.clearConfig(`No description of ${modelId}: see the message above.`);
    return;
  }
  state.config = config;
  model.showConfig(config);
  model.showStatus(state.listing, modelId);
  attention.setShape(config.n_layers, config.n_heads);
  output.setReady(true);
  if (!performance.getEntriesByName("viewer:interactive").length) {
    performance.mark("viewer:interactive");
  }
  await tokenize();
}

function clearViews() {
  state.analysis?.abort();
  state.sequence = null;
  state.tokens = null;
  prompt.clearTokens();
  attention.clear("Pick a model and type a prompt: attention appears here.");
  lens.clear();
  norms.clear();
}

function promptChanged() {
  tokenizeSoon();
  saveUrlSoon();
}

function saveUrl() {
  writeUrlState({
    model: state.modelId,
    prompt: prompt.value,
    ...output.fieldValues(),
    layer: attention.layer,
    head: attention.head,
    view: attention.view,
  });
}

/** Tokenize the prompt in the box; a newer call supersedes an older one still running. */
function tokenize() {
  const turn = ++tokenizeTurn;
  tokenizing = tokenizeText(prompt.value, state.modelId, turn);
  return tokenizing;
}

async function tokenizeText(text, modelId, turn) {
  if (!state.config) return null;
  if (text === "") {
    prompt.clearTokens("Empty prompt: generation starts from the model's BOS token.");
    state.tokens = { token_ids: [], tokens: [], count: 0, text, modelId };
    analyse([], []);
    return state.tokens;
  }
  const body = { model_id: modelId, prompt: text };
  const answer = await attempt("tokenize", () => client.tokenize(body), tokenize);
  if (turn !== tokenizeTurn) return tokenizing;
  if (!answer) {
    prompt.clearTokens();
    return null;
  }
  state.tokens = { ...answer, text, modelId };
  prompt.showTokens(answer, text);
  analyse(answer.token_ids, answer.tokens);
  return state.tokens;
}

/** The tokens of the prompt now in the box: waits for, or starts, their tokenization. */
async function currentTokens() {
  tokenizeSoon.now();
  const tokens = await tokenizing;
  const fresh = tokens && tokens.text === prompt.value && tokens.modelId === state.modelId;
  return fresh ? tokens : tokenize();
}

/** Show attention, lens and norms of a token sequence (unless they already show it). */
function analyse(ids, labels) {
  const shown = state.sequence;
  if (shown?.modelId === state.modelId && sameIds(shown.ids, ids)) return;
  state.analysis?.abort();
  state.analysis = new AbortController();
  state.sequence = { modelId: state.modelId, ids, labels };
  attention.reset(ids, labels); // asks for its layer through fetchAttention
  if (ids.length) fetchLens();
  else {
    lens.clear();
    norms.clear();
  }
}

async function fetchLens() {
  const { modelId, ids, labels } = state.sequence;
  const signal = state.analysis.signal;
  lens.loading(ids.length);
  norms.loading();
  const body = { model_id: modelId, token_ids: ids, include: ["logit_lens", "resid_norms"], top_k: 1 };
  const answer = await attempt("inspect", () => client.inspect(body, { signal }), fetchLens);
  if (!answer || signal.aborted) return;
  lens.show(answer, labels);
  norms.show(answer);
}

async function fetchAttention(layer) {
  if (!state.sequence?.ids.length || !state.config) return;
  const { modelId, ids } = state.sequence;
  const signal = state.analysis.signal;
  const dense = state.config.n_heads * ids.length ** 2 * 2 <= DENSE_BYTES;
  const body = {
    model_id: modelId,
    token_ids: ids,
    include: ["attention"],
    layers: [layer],
    attention: dense ? { format: "dense" } : { format: "topk", k: 32 },
  };
  const retry = () => fetchAttention(layer);
  const answer = await attempt("inspect", () => client.inspect(body, { signal }), retry);
  if (answer && !signal.aborted) attention.showInspect(layer, answer.attention);
}

function generate() {
  if (state.stream || !state.config) return state.generation;
  saveUrlSoon.now(); // the link reproduces what is generated
  const controller = new AbortController();
  state.stream = controller;
  output.setRunning(true);
  state.generation = streamGeneration(controller).finally(() => {
    state.stream = null;
    prompt.setBusy(false);
    output.setRunning(false);
    refreshStatus();
  });
  return state.generation;
}

async function streamGeneration(controller) {
  const tokens = await currentTokens();
  if (!tokens || controller.signal.aborted) return;
  const context = state.config.context_length;
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
    model_id: tokens.modelId,
    prompt: tokens.text,
    max_new_tokens: Math.min(wanted, room),
    details: true,
    top_logprobs: Math.min(TOP_LOGPROBS, state.config.vocab_size),
    return_full_text: false,
  };
  const live = attention.live ? liveLayers(attention.layer) : null;
  if (live) Object.assign(body, { attention: "last_row", layers: live });
  analyse(tokens.token_ids, tokens.tokens); // the stream extends the prompt's own rows
  prompt.setBusy(true);
  output.begin(room < wanted ? `max_new_tokens limited to ${room} by the context (${context}).` : "");
  state.last = { prompt: tokens.text, tokens: [] };
  try {
    for await (const event of client.stream(body, { signal: controller.signal })) {
      if (event.type === "token") {
        state.last.tokens.push(event.token);
        output.addToken(event.token);
        attention.addToken(event.token.id, event.token.text);
        if (event.token.attention) attention.addLiveRows(live, event.token.attention);
      } else if (event.type === "done") {
        output.addText(event.done.delta);
        output.finish(event.done);
      }
    }
    notice.clear("generate");
  } catch (error) {
    if (error.name === "AbortError") output.stopped();
    else {
      output.failed();
      notice.show("generate", error, generate);
    }
  }
  const made = state.last.tokens;
  if (made.length) {
    analyse([...tokens.token_ids, ...made.map((t) => t.id)], [...tokens.tokens, ...made.map((t) => t.text)]);
  }
}

function liveLayers(selected) {
  const { n_layers: layers, n_heads: heads } = state.config;
  return layers * heads <= LIVE_EVERY_LAYER ? Array.from({ length: layers }, (_, i) => i) : [selected];
}

function stop() {
  state.stream?.abort();
}

/** Continue from another token: the prompt becomes the text up to it plus that token. */
async function continueFrom(index, alternative) {
  stop();
  await state.generation;
  const before = state.last.tokens.slice(0, index).map((t) => t.text).join("");
  prompt.value = state.last.prompt + before + alternative.text;
  saveUrl();
  tokenize();
  await generate();
}

async function refreshStatus() {
  const listing = await client.models().catch(() => null);
  if (!listing) return;
  state.listing = listing;
  model.showStatus(listing, state.modelId);
}

function useKey(key, retry) {
  localStorage.setItem(KEY_STORAGE, key);
  client.apiKey = key;
  notice.clear();
  (retry ?? loadModels)();
}

function sameIds(a, b) {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}
