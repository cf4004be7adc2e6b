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

export class RealtimeClient {
  /** handlers: {onEvent(ev), onClose({code, reason, wasOpen})} */
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.open = false;
    this.closing = false;
  }

  /** Resolves once the socket is open; rejects if it closes first. */
  connect(url, key) {
    const protocols = ["realtime"];
    if (key) protocols.push(`openai-insecure-api-key.${key}`);
    const ws = new WebSocket(url, protocols);
    this.ws = ws;
    this.closing = false;
    return new Promise((resolve, reject) => {
      let settled = false;
      ws.onopen = () => {
        this.open = true;
        settled = true;
        resolve();
      };
      ws.onmessage = (m) => {
        if (typeof m.data !== "string") return;
        let ev;
        try {
          ev = JSON.parse(m.data);
        } catch {
          return;
        }
        this.handlers.onEvent(ev);
      };
      ws.onerror = () => {}; // a close event always follows, with the code
      ws.onclose = (e) => {
        const wasOpen = this.open;
        this.open = false;
        if (this.ws === ws) this.ws = null;
        if (!settled) {
          settled = true;
          reject(new Error(e.code === 1006 ? "cannot connect to the server (wrong API key, or server down?)"
                                           : `connection refused (${e.code} ${e.reason || ""})`.trim()));
          return;
        }
        if (!this.closing) this.handlers.onClose({ code: e.code, reason: e.reason, wasOpen });
      };
    });
  }

  send(event) {
    if (!this.ws || !this.open) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  get bufferedAmount() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  close() {
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
