// The error notice: what went wrong, in words for people. A 401 brings up a field for an API
// key, a 503 counts down to its Retry-After, a 413 says the text is too long for this view.
// Retry is offered only where sending the same request again can succeed.

export class Notice {
  constructor(root, { onKey }) {
    this.root = root;
    this.text = root.querySelector(".notice-text");
    this.keyForm = root.querySelector(".key-form");
    this.retryButton = root.querySelector(".retry");
    this.kind = null;
    this.keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = this.keyForm.elements.key.value.trim();
      if (key) onKey(key, this.retry);
    });
    this.retryButton.addEventListener("click", () => {
      const retry = this.retry;
      this.clear();
      retry?.();
    });
    root.querySelector(".dismiss").addEventListener("click", () => this.clear());
  }

  /** Show `error` from the work called `kind`; `retry` repeats that work. */
  show(kind, error, retry = null) {
    clearInterval(this.countdown);
    this.kind = kind;
    this.retry = retry;
    const status = error.status ?? 0;
    this.root.dataset.status = status;
    this.root.dataset.code = error.code ?? "";
    this.keyForm.hidden = status !== 401;
    this.retryButton.hidden = !retry || !retryable(error);
    this.retryButton.disabled = false;
    if (status === 401) {
      this.text.textContent = `This server needs an API key (${error.message}).`;
    } else if (status === 413) {
      this.text.textContent = `The prompt is too long for this view: ${error.message}`;
    } else if (status === 503 || error.code === "shutting_down") {
      this.#countDown(error);
    } else if (error instanceof TypeError) {
      this.text.textContent = `The server cannot be reached (${error.message}).`;
    } else {
      const code = [status || "", error.code ?? ""].join(" ").trim();
      this.text.textContent = code ? `${error.message} (${code})` : error.message;
    }
    this.root.hidden = false;
    // The notice sits above the panels, in the page's flow (a banner pinned over the page
    // would cover the model picker): bring it into view when the page is scrolled past it.
    if (this.root.getBoundingClientRect().top < 0) this.root.scrollIntoView({ block: "nearest" });
    if (status === 401) this.keyForm.elements.key.focus();
  }

  /** Hide the notice, or only if it shows an error of `kind`. */
  clear(kind = null) {
    if (kind && kind !== this.kind) return;
    clearInterval(this.countdown);
    this.kind = null;
    this.root.hidden = true;
  }

  #countDown(error) {
    let left = error.retryAfter;
    const say = () => {
      this.text.textContent =
        `The server is busy: ${error.message}. ` +
        (left === null ? "Retry in a moment." : left > 0 ? `Retry in ${left} s.` : "Retry now.");
      this.retryButton.disabled = left > 0;
    };
    say();
    if (left === null) return;
    this.countdown = setInterval(() => {
      left -= 1;
      say();
      if (left <= 0) clearInterval(this.countdown);
    }, 1000);
  }
}

/**
 * Can the same request succeed if sent again? Yes for a server's trouble (5xx), a timeout,
 * a rate limit, a dropped connection or a stream that failed midway (no HTTP status); no for
 * the other 4xx: a 400 or 404 answers the request itself, and would answer it again.
 */
function retryable(error) {
  const status = error.status ?? 0;
  return status === 0 || status === 408 || status === 429 || status >= 500;
}
