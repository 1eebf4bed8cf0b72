// Server-Sent Events, read as the HTML standard says ("Interpreting an event stream"):
// lines end with CRLF, LF or CR; the data lines of one event are joined with "\n"; a line
// starting with ":" is a comment; a blank line dispatches the event, if it has any data.

const LINE_END = /\r\n|\r|\n/g;

/** Turns decoded text, pushed in pieces of any size, into events `{type, data, lastEventId}`. */
export class EventStreamParser {
  #pending = "";
  #started = false;
  #type = "";
  #data = [];
  #id = "";
  lastEventId = "";
  retry = null;

  /** Feed the next piece of text; returns the events it completes. */
  push(text) {
    if (!this.#started && text) {
      this.#started = true;
      if (text[0] === "\ufeff") text = text.slice(1);
    }
    const buffer = this.#pending + text;
    const events = [];
    let start = 0;
    LINE_END.lastIndex = 0;
    for (let end; (end = LINE_END.exec(buffer)); start = LINE_END.lastIndex) {
      // A CR at the very end may be the first half of a CRLF: wait for the next piece.
      if (end[0] === "\r" && LINE_END.lastIndex === buffer.length) break;
      this.#line(buffer.slice(start, end.index), events);
    }
    this.#pending = buffer.slice(start);
    return events;
  }

  /** The stream ended: the standard drops an event that no blank line completed. */
  end() {
    const events = [];
    if (this.#pending.endsWith("\r")) this.#line(this.#pending.slice(0, -1), events);
    this.#pending = "";
    return events;
  }

  #line(line, events) {
    if (line === "") return this.#dispatch(events);
    if (line[0] === ":") return; // a comment, such as the server's ": ping"
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") this.#type = value;
    else if (field === "data") this.#data.push(value);
    else if (field === "id" && !value.includes("\0")) this.#id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  #dispatch(events) {
    this.lastEventId = this.#id;
    if (this.#data.length) {
      const type = this.#type || "message";
      events.push({ type, data: this.#data.join("\n"), lastEventId: this.lastEventId });
    }
    this.#type = "";
    this.#data = [];
  }
}

/** The events of a `fetch` response body, as they arrive. Leaving the loop closes the body. */
export async function* readEventStream(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new EventStreamParser();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.push(value);
    }
    finished = true;
    yield* parser.end();
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
}
