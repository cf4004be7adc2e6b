// A small OpenAI Realtime (GA) WebSocket client for the browser.
// Browsers cannot set headers, so the API key travels as the subprotocol
// "openai-insecure-api-key.<key>" next to "realtime".

export function realtimeUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/v1/realtime?model=moksori&moksori_timeline=1`;
}

const B64_CHUNK = 0x8000;

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += B64_CHUNK) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + B64_CHUNK));
  }
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// The server's default limit for one client event (MOKSORI_SERVER_MAX_MESSAGE_BYTES, 4 MiB); a larger
// one is refused there with `message_too_large`, so the page refuses it first.
export const WS_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export class RealtimeClient {
  /** handlers: {onEvent(ev), onClose({code, reason, wasOpen})} */
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.open = false;
    this.closing = false;
    this.cancelPending = null; // rejects the connect() under way
    this.maxMessageBytes = WS_MAX_MESSAGE_BYTES;
  }

  /** Resolves once the socket is open; rejects if it closes first, or (AbortError) if close() or
   *  `signal` cancel it (the socket is closed then). A socket from an earlier connect() is closed. */
  connect(url, key, signal = null) {
    this.close();
    const protocols = ["realtime"];
    if (key) protocols.push(`openai-insecure-api-key.${key}`);
    const ws = new WebSocket(url, protocols);
    this.ws = ws;
    this.closing = false;
    return new Promise((resolve, reject) => {
      let settled = false;
      const cancel = () => {
        if (settled) return;
        settled = true;
        try {
          ws.close(1000, "client stop");
        } catch {
          /* already closed */
        }
        if (this.ws === ws) {
          this.ws = null;
          this.open = false;
        }
        const e = new Error("cancelled");
        e.name = "AbortError";
        reject(e);
      };
      const done = () => {
        if (this.cancelPending === cancel) this.cancelPending = null;
        if (signal) signal.removeEventListener("abort", cancel);
      };
      this.cancelPending = cancel;
      if (signal) {
        if (signal.aborted) {
          cancel();
          done();
          return;
        }
        signal.addEventListener("abort", cancel);
      }
      ws.onopen = () => {
        done();
        if (settled || this.ws !== ws) return;
        this.open = true;
        settled = true;
        resolve();
      };
      ws.onmessage = (m) => {
        if (this.ws !== ws) return; // an abandoned socket's events
        const ev = serverEvent(m.data);
        if (ev) this.handlers.onEvent(ev);
      };
      ws.onerror = () => {}; // a close event always follows, with the code
      ws.onclose = (e) => {
        done();
        const current = this.ws === ws;
        const wasOpen = current && this.open;
        if (current) {
          this.open = false;
          this.ws = null;
        }
        if (!settled) {
          settled = true;
          reject(new Error(e.code === 1006 ? "cannot connect to the server (wrong API key, or server down?)"
                                           : `connection refused (${e.code} ${e.reason || ""})`.trim()));
          return;
        }
        if (current && !this.closing) this.handlers.onClose({ code: e.code, reason: e.reason, wasOpen });
      };
    });
  }

  /** false if not open; throws a RangeError (nothing sent) if the event is over maxMessageBytes. */
  send(event) {
    if (!this.ws || !this.open) return false;
    const text = JSON.stringify(event);
    if (utf8Length(text) > this.maxMessageBytes) {
      const e = new RangeError(`the message is larger than the ${this.maxMessageBytes} bytes the server takes`);
      e.name = "MessageTooLarge";
      e.limit = this.maxMessageBytes;
      throw e;
    }
    this.ws.send(text);
    return true;
  }

  get bufferedAmount() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  close() {
    if (this.cancelPending) this.cancelPending();
    this.cancelPending = null;
    if (!this.ws) return;
    this.closing = true;
    try {
      this.ws.close(1000, "client stop");
    } catch {
      /* already closed */
    }
    this.ws = null;
    this.open = false;
  }
}

/** UTF-8 bytes of a string (a lone surrogate counts as the 3 bytes of U+FFFD, as it is sent). */
/** A server event from a message's data, or null (not text, or not JSON). */
export function serverEvent(data) {
  if (typeof data !== "string") return null;
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

export function utf8Length(text) {
  if (!/[^\x00-\x7f]/.test(text)) return text.length;
  return new TextEncoder().encode(text).length;
}
