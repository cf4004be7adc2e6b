// Per-turn latency from the engine timeline, drawn as stacked bars.
//
// A turn's headline number runs from the end of the user's voiced audio (user.speech_stopped,
// whose t is the end of speech, not the moment it was decided) to the first reply audio
// (agent.audio_started). Stages, each ending at its timeline event:
//   speech recognition -> stt.finished, LLM -> llm.first_token, TTS -> tts.first_audio,
//   start -> agent.audio_started.
// The server speculates during the pause, so stages may finish before the turn is certain;
// user.turn_ended is drawn as a marker on the bar.

export const STAGES = [
  { key: "stt", label: "speech recognition" },
  { key: "llm", label: "LLM" },
  { key: "tts", label: "TTS" },
  { key: "start", label: "start" },
];

export function median(values) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function niceCeil(ms) {
  const step = ms <= 2000 ? 250 : ms <= 5000 ? 500 : 1000;
  return Math.max(1000, Math.ceil(ms / step) * step);
}

export class LatencyTracker {
  constructor(listEl, summaryEl, { keep = 8, onTurn = () => {} } = {}) {
    this.listEl = listEl;
    this.summaryEl = summaryEl;
    this.keep = keep;
    this.onTurn = onTurn;
    this.epoch = 0;
    this.open = new Map(); // turn_id -> turn (this connection)
    this.byResponse = new Map(); // response_id -> turn_id
    this.done = []; // completed turns, oldest first
    this.all = []; // every latency (ms) this page has seen
  }

  /** A new connection: turn ids start again from 0. */
  newSession() {
    this.epoch++;
    this.open.clear();
    this.byResponse.clear();
  }

  turn(turnId, create = true) {
    if (turnId === null || turnId === undefined) return null;
    let t = this.open.get(turnId);
    if (!t && create) {
      t = { turnId, epoch: this.epoch, t0: null, decided: null, reason: null, silenceMs: null,
            stt: null, llm: null, tts: null, audio: null, responseId: null, text: "", ms: null };
      this.open.set(turnId, t);
      while (this.open.size > 32) this.open.delete(this.open.keys().next().value);
    }
    return t;
  }

  viaResponse(responseId) {
    const id = this.byResponse.get(responseId);
    return id === undefined ? null : this.turn(id, false);
  }

  onTimeline(e) {
    switch (e.type) {
      case "user.speech_stopped": {
        const t = this.turn(e.turn_id);
        t.t0 = e.t;
        break;
      }
      case "user.turn_ended": {
        const t = this.turn(e.turn_id);
        t.decided = e.t;
        t.reason = e.reason;
        t.silenceMs = e.silence_ms ?? null;
        if (t.t0 === null) t.t0 = e.t; // manual commit: no end-of-speech event
        break;
      }
      case "user.transcript": {
        const t = this.turn(e.turn_id, false);
        if (t && e.final) t.text = e.text || "";
        break;
      }
      case "stt.finished": {
        const t = this.turn(e.turn_id, false);
        if (t && t.stt === null) t.stt = e.t;
        break;
      }
      case "agent.response_started": {
        if (e.turn_id === null || e.turn_id === undefined) break;
        this.byResponse.set(e.response_id, e.turn_id);
        const t = this.turn(e.turn_id);
        if (t.responseId === null) t.responseId = e.response_id;
        break;
      }
      case "llm.first_token": {
        const t = this.viaResponse(e.response_id);
        if (t && t.llm === null) t.llm = e.t;
        break;
      }
      case "tts.first_audio": {
        const t = this.viaResponse(e.response_id);
        if (t && t.tts === null) t.tts = e.t;
        break;
      }
      case "agent.audio_started": {
        const t = this.viaResponse(e.response_id);
        if (t && t.audio === null && t.t0 !== null) {
          t.audio = e.t;
          this.complete(t);
        }
        break;
      }
      default:
    }
  }

  complete(t) {
    const ms = (x) => (x === null ? null : Math.round(1000 * (x - t.t0)));
    const total = Math.max(0, ms(t.audio));
    // stage boundaries, kept in order and inside [0, total]
    let prev = 0;
    const stages = {};
    const ends = { stt: ms(t.stt), llm: ms(t.llm), tts: ms(t.tts), start: total };
    for (const s of STAGES) {
      const end = Math.min(total, Math.max(prev, ends[s.key] ?? prev));
      stages[s.key] = end - prev;
      prev = end;
    }
    const row = {
      turn: t.turnId, session: t.epoch, ms: total, stages, decidedMs: t.decided === null ? null : ms(t.decided),
      reason: t.reason, silenceMs: t.silenceMs, text: t.text, responseId: t.responseId,
      raw: { stt: ends.stt, llm: ends.llm, tts: ends.tts },
    };
    this.done.push(row);
    if (this.done.length > this.keep) this.done.shift();
    this.all.push(total);
    this.onTurn(row);
    this.render();
  }

  render() {
    const rows = this.done;
    const p50 = median(this.all);
    this.summaryEl.textContent = p50 === null ? "no turns yet"
      : `p50 ${Math.round(p50)} ms · ${this.all.length} turn${this.all.length === 1 ? "" : "s"}`;
    const scale = niceCeil(Math.max(0, ...rows.map((r) => Math.max(r.ms, r.decidedMs ?? 0))));
    const grid = scale <= 2000 ? 250 : scale <= 5000 ? 500 : 1000;
    const frag = document.createDocumentFragment();
    for (let i = rows.length - 1; i >= 0; i--) frag.appendChild(this.rowElement(rows[i], scale, grid));
    this.listEl.replaceChildren(frag);
    this.listEl.style.setProperty("--grid", `${(100 * grid) / scale}%`);
    this.listEl.dataset.scale = String(scale);
    const axis = this.listEl.parentElement && this.listEl.parentElement.querySelector(".latency-axis");
    if (axis) axis.replaceChildren(...axisLabels(scale, grid));
  }

  rowElement(r, scale, grid) {
    const li = document.createElement("li");
    li.className = "turn";
    li.setAttribute("data-testid", "latency-turn");
    li.dataset.ms = String(r.ms);
    li.dataset.turn = String(r.turn);
    const label = document.createElement("span");
    label.className = "turn-label";
    label.textContent = `#${r.turn}`;
    if (r.text) label.title = r.text;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    const parts = [];
    let left = 0;
    for (const s of STAGES) {
      const w = r.stages[s.key];
      parts.push(`${s.label} ${w} ms`);
      if (w > 0) {
        const seg = document.createElement("span");
        seg.className = `seg seg-${s.key}`;
        seg.style.left = `${(100 * left) / scale}%`;
        seg.style.width = `${(100 * w) / scale}%`;
        seg.title = `${s.label}: ${w} ms`;
        bar.appendChild(seg);
      }
      left += w;
    }
    if (r.decidedMs !== null) {
      const mark = document.createElement("span");
      mark.className = "marker";
      mark.style.left = `${(100 * Math.max(0, r.decidedMs)) / scale}%`;
      const why = r.reason ? ` (${r.reason}${r.silenceMs !== null ? `, ${r.silenceMs} ms silence` : ""})` : "";
      mark.title = `turn end decided at +${r.decidedMs} ms${why}`;
      bar.appendChild(mark);
      parts.push(`turn end decided at ${r.decidedMs} ms`);
    }
    bar.setAttribute("aria-label", `turn ${r.turn}: ${r.ms} ms total; ${parts.join(", ")}`);
    const num = document.createElement("span");
    num.className = "turn-ms";
    num.textContent = `${r.ms} ms`;
    li.append(label, bar, num);
    return li;
  }
}

function axisLabels(scale, grid) {
  const out = [];
  const every = scale / grid > 6 ? grid * 2 : grid;
  for (let v = 0; v <= scale; v += every) {
    const s = document.createElement("span");
    s.style.left = `${(100 * v) / scale}%`;
    s.textContent = v === 0 ? "0" : `${+(v / 1000).toFixed(2)} s`;
    out.push(s);
  }
  return out;
}
