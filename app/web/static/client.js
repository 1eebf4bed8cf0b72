// A client for llmviz-server, for this page and any other frontend:
//
//   import { LlmvizClient } from "http://localhost:8000/viewer/client.js";
//   const client = new LlmvizClient();            // talks to the server it was loaded from
//   for await (const event of client.stream({ prompt: "Hello", details: true })) { ... }
//
// Errors are ApiError: the server's message, code, HTTP status and Retry-After.

import { readEventStream } from "./sse.js";

export { EventStreamParser, readEventStream } from "./sse.js";
export { decodeTensor, float16ToFloat32, block, offset } from "./tensors.js";

/** An error answer of the API, or an `event: error` ending a stream. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = "error", retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, when the server said when to retry
  }

  static async from(response) {
    let message = `${response.status} ${response.statusText}`;
    let code = "http_error";
    try {
      const body = await response.json();
      message = body.error ?? message;
      code = body.code ?? code;
    } catch {
      // not JSON (a proxy's error page): keep the status line
    }
    const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
    return new ApiError(message, { status: response.status, code, retryAfter });
  }
}

/** The header Ray Serve's proxy routes a call by (its model multiplexing). */
export const MODEL_HEADER = "serve_multiplexed_model_id";

export class LlmvizClient {
  /**
   * @param {object} options
   * @param {string|URL} [options.baseUrl] the server; by default the one that served this file
   * @param {string|null} [options.apiKey] sent as `Authorization: Bearer <key>`
   * @param {boolean|null} [options.modelHeader] send a call's model id as the
   *   `serve_multiplexed_model_id` header too, so that Ray Serve routes it to a replica that
   *   holds the model (docs/scaling.md). By default only to the page's own origin: on
   *   another origin the header costs a CORS preflight.
   */
  constructor({ baseUrl = new URL("..", import.meta.url), apiKey = null, modelHeader = null } = {}) {
    this.baseUrl = new URL(baseUrl);
    if (!this.baseUrl.pathname.endsWith("/")) this.baseUrl.pathname += "/";
    this.apiKey = apiKey;
    this.modelHeader = modelHeader ?? this.baseUrl.origin === globalThis.location?.origin;
    // Calls that have not had their first answer yet: a model may be loading for them.
    // A page can show load progress (GET /models) only while this is above 0.
    this.waiting = 0;
  }

  /** `GET /models`: the default, available and loaded models. */
  async models({ signal } = {}) {
    return (await this.#send("GET", "models", undefined, signal)).json();
  }

  /** `GET /models/config`: a model's normalized architecture. */
  async config(modelId, { signal } = {}) {
    const path = `models/config?model_id=${encodeURIComponent(modelId)}`;
    return (await this.#send("GET", path, undefined, signal, modelId)).json();
  }

  /** `POST /tokenize`: ids, token texts, character offsets, special flags. */
  async tokenize(body, { signal } = {}) {
    return (await this.#send("POST", "tokenize", body, signal)).json();
  }

  /** `POST /detokenize`. */
  async detokenize(body, { signal } = {}) {
    return (await this.#send("POST", "detokenize", body, signal)).json();
  }

  /** `POST /generate`: the whole answer at once. */
  async generate(body, { signal } = {}) {
    return (await this.#send("POST", "generate", body, signal)).json();
  }

  /** `POST /inspect`. Its tensors stay encoded: `decodeTensor` reads them. */
  async inspect(body, { signal } = {}) {
    return (await this.#send("POST", "inspect", body, signal)).json();
  }

  /**
   * `POST /generate/stream`, as events: `{type: "text", text}` for plain pieces (and the
   * prompt), and with `details: true` `{type: "token", token}` per token, then
   * `{type: "done", done}`. An `event: error` is thrown as an ApiError. Aborting `signal`
   * (or leaving the loop) closes the connection, and the server stops generating.
   */
  async *stream(body, { signal } = {}) {
    const response = await this.#send("POST", "generate/stream", body, signal);
    // A stream answers at once and waits for its model behind pings: it is waiting until
    // its first event.
    let first = true;
    this.waiting += 1;
    try {
      for await (const event of readEventStream(response.body)) {
        if (first) {
          first = false;
          this.waiting -= 1;
        }
        if (event.type === "message") {
          yield { type: "text", text: event.data };
        } else if (event.type === "token") {
          yield { type: "token", token: JSON.parse(event.data) };
        } else if (event.type === "done") {
          yield { type: "done", done: JSON.parse(event.data) };
        } else if (event.type === "error") {
          const { error, code } = JSON.parse(event.data);
          throw new ApiError(error, { code }); // no HTTP status: the answer had begun with 200
        }
      }
    } finally {
      if (first) this.waiting -= 1;
    }
  }

  async #send(method, path, body, signal, modelId = body?.model_id) {
    // text/plain is a "simple" content type: a cross-origin call needs no preflight for it,
    // and the server reads every body as JSON whatever its Content-Type.
    const headers = body === undefined ? {} : { "Content-Type": "text/plain;charset=UTF-8" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    // Ray Serve's proxy routes by this header, never by the body (fetch refuses a header
    // value outside Latin-1: an id it cannot carry is left to the body alone).
    if (this.modelHeader && typeof modelId === "string" && /^[\x21-\x7e]+$/.test(modelId)) {
      headers[MODEL_HEADER] = modelId;
    }
    let response;
    this.waiting += 1;
    try {
      response = await fetch(new URL(path, this.baseUrl), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } finally {
      this.waiting -= 1;
    }
    if (!response.ok) throw await ApiError.from(response);
    return response;
  }
}

function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}
