// Moksori browser app: an OpenAI Realtime (GA) client plus the Moksori engine timeline.
// Transport: WebRTC by default (Opus, the browser's echo cancellation and jitter buffer), with
// a key minted by the page's server side; the WebSocket when WebRTC fails or `?transport=websocket`.
// `?webrtc=fail` makes the WebRTC attempt fail for real (a broken offer) to exercise the fallback.
import { AudioEngine } from "./audio.js";
import { LatencyTracker } from "./latency.js";
import { RealtimeClient, fromBase64, realtimeUrl, toBase64, utf8Length } from "./realtime.js";
import { WebRTCClient } from "./webrtc.js";

const $ = (sel) => document.querySelector(sel);
const OUT_RATE = 24000;
const query = new URLSearchParams(location.search);

// ------------------------------------------------------------------ settings (localStorage)

const store = {
  get(name, fallback) {
    try {
      const v = localStorage.getItem(`moksori.${name}`);
      return v === null ? fallback : v;
    } catch {
      return fallback;
    }
  },
  set(name, value) {
    try {
      localStorage.setItem(`moksori.${name}`, value);
    } catch {
      /* private mode */
    }
  },
};

const ui = {
  start: $("#start"),
  stop: $("#stop"),
  fresh: $("#new-conversation"),
  state: $('[data-testid="state"]'),
  stateText: $('[data-testid="state"] .state-text'),
  level: $('[data-testid="level"]'),
  levelFill: $(".level-fill"),
  language: $("#language"),
  voice: $("#voice"),
  key: $("#api-key"),
  raw: $("#raw"),
  user: $('[data-testid="transcript-user"]'),
  agent: $('[data-testid="transcript-agent"]'),
  form: $("#text-form"),
  text: $("#text"),
  toast: $('[data-testid="error"]'),
};

// who is talking: one user id per browser, kept here, so the agent remembers earlier conversations
function newUserId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
// the server takes 1-255 letters, digits and _ . @ : + - = / (an edited or corrupted stored id,
// e.g. one with a lone surrogate, would fail every Start: make a new one instead)
const USER_ID = /^[\p{L}\p{N}_.@:+\-=/]{1,255}$/u;
const storedUser = store.get("user", "");
const userId = USER_ID.test(storedUser) ? storedUser : newUserId();
store.set("user", userId);
let freshConversation = false; // "New conversation": the next session starts without the earlier ones

/** Query parameters every new session carries: the user id, and whether to load their history. */
function sessionParams() {
  let p = `&user=${encodeURIComponent(userId)}`;
  if (freshConversation) p += "&moksori_history=0";
  return p;
}

// The key travels in a WebSocket subprotocol ("openai-insecure-api-key.<key>") and an HTTP header:
// both take only printable ASCII, the subprotocol only "token" characters (no spaces, quotes, commas...)
const KEY_CHARS = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]*$/;

/** Why the API key cannot work, or "" when it can (the message never contains the key). */
function keyProblem(key) {
  if (KEY_CHARS.test(key)) return "";
  if (/[^\x21-\x7e]/.test(key)) {
    return "The API key contains a space or a character outside plain ASCII (letters, digits, - _ .): " +
      "check it in Settings; it looks mistyped or pasted with extra text";
  }
  return "The API key contains a character an API key cannot have (such as \" , ; : / ( ) [ ] { } < > = ? @ \\): " +
    "check it in Settings";
}

function apiKey() {
  return ui.key.value.trim();
}

/** Error text with the API key (if any) blanked out: browsers quote it in some messages. */
function redact(text) {
  const key = apiKey();
  let out = String(text);
  if (key.length >= 4) out = out.split(key).join("[API key]");
  return out.replace(/openai-insecure-api-key\.[^\s'",\]]*/g, "openai-insecure-api-key.[API key]");
}

ui.language.value = store.get("language", "auto");
ui.voice.value = store.get("voice", "auto");
ui.key.value = store.get("key", "");
ui.raw.checked = query.get("raw") === "1" || store.get("raw", "0") === "1";
if (!ui.language.value) ui.language.value = "auto";
if (!ui.voice.value) ui.voice.value = "auto";

// ------------------------------------------------------------------ counters for tests

const M = {
  state: "off",
  stateHistory: ["off"],
  connected: false,
  sampleRate: 0,
  sentAudioSamples: 0,
  receivedAudioSamples: 0,
  playedSamples: 0,
  flushes: 0,
  flushRequests: 0,
  truncates: [],
  turns: [],
  errors: [],
  level: 0,
  levelMax: 0,
  events: {},
  timeline: [], // the last few hundred engine timeline events
  transport: null, // "webrtc" | "websocket" once connected
  webrtcError: null, // why the last WebRTC attempt failed, if it did
  callId: null,
  user: null, // this browser's user id (kept in localStorage)
};
window.moksori = M;
M.user = userId;

// ------------------------------------------------------------------ state indicator

const STATE_NAMES = { idle: "ready", user_speaking: "listening", user_paused: "listening", thinking: "thinking",
                      speaking: "speaking" };

function setState(name) {
  if (M.state === name) return;
  M.state = name;
  M.stateHistory.push(name);
  if (M.stateHistory.length > 200) M.stateHistory.splice(0, 100);
  ui.state.dataset.state = name;
  ui.stateText.textContent = name;
}

// ------------------------------------------------------------------ toast

let toastTimer = 0;
function toast(message, { warning = false } = {}) {
  message = redact(message);
  M.errors.push(message);
  if (M.errors.length > 50) M.errors.shift();
  ui.toast.textContent = message;
  ui.toast.classList.toggle("warning", warning);
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    ui.toast.hidden = true;
  }, 7000);
}
ui.toast.addEventListener("click", () => {
  ui.toast.hidden = true;
});

// ------------------------------------------------------------------ transcript

const userLines = new Map(); // item_id -> element
const agentLines = new Map(); // response_id -> {el, text}

function scrollDown(box) {
  box.scrollTop = box.scrollHeight;
}

function trim(map, limit = 100) {
  while (map.size > limit) map.delete(map.keys().next().value);
}

function userLine(itemId) {
  let el = userLines.get(itemId);
  if (!el) {
    el = document.createElement("p");
    el.className = "line";
    el.dataset.item = itemId || "";
    ui.user.appendChild(el);
    userLines.set(itemId, el);
    trim(userLines);
  }
  return el;
}

function userPartial(itemId, text) {
  const el = userLine(itemId);
  if (el.classList.contains("final")) return; // a late hypothesis after the final one
  el.classList.add("partial");
  el.textContent = text;
  scrollDown(ui.user);
}

function userFinal(itemId, text, language) {
  if (!text || !text.trim()) {
    const el = userLines.get(itemId);
    if (el && !el.classList.contains("final")) el.remove();
    return;
  }
  const el = userLine(itemId);
  el.classList.remove("partial");
  el.classList.add("final");
  el.textContent = text;
  if (language) el.lang = language;
  scrollDown(ui.user);
}

function typedLine(text) {
  const el = document.createElement("p");
  el.className = "line final typed";
  el.textContent = text;
  ui.user.appendChild(el);
  scrollDown(ui.user);
}

function agentLine(responseId) {
  let line = agentLines.get(responseId);
  if (!line) {
    const el = document.createElement("p");
    el.className = "line";
    el.dataset.response = responseId || "";
    ui.agent.appendChild(el);
    line = { el, text: "", done: false };
    agentLines.set(responseId, line);
    trim(agentLines);
  }
  return line;
}

function agentDelta(responseId, delta) {
  const line = agentLine(responseId);
  if (line.done) return;
  line.text += delta;
  line.el.textContent = line.text;
  scrollDown(ui.agent);
}

function agentDone(responseId, text, interrupted, language) {
  const existing = agentLines.get(responseId);
  if (!existing && !text) return;
  const line = agentLine(responseId);
  line.done = true;
  if (language) line.el.lang = language;
  if (interrupted && !text) {
    // cut before any of it was heard: nothing was said, so nothing to show
    line.done = true; // late deltas stay dropped
    line.el.remove();
    return;
  }
  if (interrupted) {
    line.text = text;
    line.el.textContent = line.text ? `${line.text} ` : "";
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "(interrupted)";
    line.el.appendChild(tag);
    line.el.classList.add("interrupted");
  } else if (text && text !== line.text) {
    line.text = text;
    line.el.textContent = text;
  }
  if (!line.text && !interrupted) line.el.remove();
  scrollDown(ui.agent);
}

// ------------------------------------------------------------------ latency

const latency = new LatencyTracker($('[data-testid="latency"]'), $("#p50"), {
  keep: 8,
  onTurn(row) {
    M.turns.push(row);
    if (M.turns.length > 50) M.turns.shift();
  },
});

// ------------------------------------------------------------------ audio + playback bookkeeping

const items = {
  assistant: new Set(), // assistant item ids we received audio for
  done: new Set(), // items whose audio stream ended (response.output_audio.done)
  pending: new Set(), // items queued or playing right now
  discarded: new Set(), // items cut by a barge-in: later audio for them is dropped
  truncated: new Set(),
};

function resetItems() {
  for (const set of Object.values(items)) set.clear();
}

function remember(set, id, limit = 200) {
  set.add(id);
  if (set.size > limit) set.delete(set.values().next().value);
}

let levelShown = 0;
let playedBase = 0;
let lastPlayed = 0;
const audio = new AudioEngine({
  onChunk(pcm, level) {
    M.level = level;
    if (level > M.levelMax) M.levelMax = level;
    // dBFS -> 0..1 over -60..0 dB, with a quick attack and slow release
    const db = level > 0 ? 20 * Math.log10(level) : -100;
    const v = Math.max(0, Math.min(1, (db + 60) / 60));
    levelShown = v > levelShown ? v : levelShown * 0.8 + v * 0.2;
    ui.levelFill.style.transform = `scaleX(${levelShown.toFixed(3)})`;
    ui.level.dataset.level = levelShown.toFixed(3);
    ui.level.setAttribute("aria-valuenow", levelShown.toFixed(2));
    if (rt === rtc) {
      if (rtc.open) M.sentAudioSamples += pcm.byteLength / 2; // the mic track itself carries it
    } else {
      sendAudio(pcm);
    }
  },
  onRemoteChunk(pcm, level) {
    // WebRTC reply audio as rendered, in 24 kHz samples like the WebSocket path's counters
    if (level < 0.002) return;
    const n = pcm.byteLength / 2;
    M.receivedAudioSamples += n;
    M.playedSamples += n;
  },
  onProgress(m) {
    // the worklet counts per AudioContext; keep the page's counter growing across Stop/Start
    lastPlayed = m.played;
    M.playedSamples = playedBase + m.played;
    if (!m.active && m.queued === 0) {
      for (const id of items.pending) if (items.done.has(id)) items.pending.delete(id);
    }
  },
});

const preOpen = []; // mic chunks captured before the socket opened (the last PRE_OPEN_CHUNKS)
const PRE_OPEN_CHUNKS = 375; // 15 s of 40 ms chunks: a WebRTC attempt can take ~11 s to fail
function sendAudio(pcm) {
  const bytes = new Uint8Array(pcm);
  if (!rt.open) {
    if (conn.running) {
      preOpen.push(bytes);
      if (preOpen.length > PRE_OPEN_CHUNKS) preOpen.shift();
    }
    return;
  }
  while (preOpen.length) sendBytes(preOpen.shift());
  sendBytes(bytes);
}

function sendBytes(bytes) {
  if (rt.send({ type: "input_audio_buffer.append", audio: toBase64(bytes) })) M.sentAudioSamples += bytes.length / 2;
}

/** Barge-in: drop queued reply audio now and tell the server how much was heard. */
function flushPlayback(reason) {
  M.flushRequests++;
  if (rt === rtc) {
    // over WebRTC the server holds the unplayed audio and drops it itself (output_audio_buffer.cleared);
    // it also knows what was sent, so there is nothing to truncate from here
    if (reason === "output_audio_buffer.cleared") M.flushes++;
    return;
  }
  for (const id of items.pending) remember(items.discarded, id);
  items.pending.clear();
  audio.flush().then((r) => {
    if (r.dropped > 0 || r.itemId) M.flushes++;
    const id = r.itemId;
    if (!id || !items.assistant.has(id) || items.truncated.has(id)) return;
    if (r.dropped === 0 && items.done.has(id)) return; // it had finished: nothing cut
    const ms = Math.floor((1000 * r.itemPlayed) / OUT_RATE);
    remember(items.truncated, id);
    M.truncates.push({ item_id: id, audio_end_ms: ms, reason });
    rt.send({ type: "conversation.item.truncate", item_id: id, content_index: 0, audio_end_ms: ms });
  });
}

// ------------------------------------------------------------------ server events -> UI

function onTimeline(e) {
  M.events[`timeline:${e.type}`] = (M.events[`timeline:${e.type}`] || 0) + 1;
  if (e.type !== "agent.text_delta" && e.type !== "user.transcript_delta") {
    M.timeline.push(e);
    if (M.timeline.length > 400) M.timeline.splice(0, 200);
  }
  latency.onTimeline(e);
  switch (e.type) {
    case "session.state":
      if (conn.running || rt.open) setState(STATE_NAMES[e.state] || e.state);
      break;
    case "user.transcript_delta":
      userPartial(e.item_id, e.text);
      break;
    case "user.transcript":
      if (e.final && !e.typed) userFinal(e.item_id, e.text, e.language);
      break;
    case "agent.interrupted":
    case "agent.audio_cleared":
      flushPlayback(e.type);
      break;
    case "agent.response_done":
      agentDone(e.response_id, e.text, !!e.interrupted, e.language);
      break;
    default:
  }
}

function onServerEvent(ev) {
  watchdog.onEvent();
  if (isProbeAnswer(ev)) return;
  M.events[ev.type] = (M.events[ev.type] || 0) + 1;
  switch (ev.type) {
    case "moksori.event":
      if (ev.event) onTimeline(ev.event);
      break;
    case "session.created":
      M.connected = true;
      if (M.state === "connecting" || M.state === "off") setState("ready");
      break;
    case "input_audio_buffer.speech_started":
    case "output_audio_buffer.cleared":
      flushPlayback(ev.type);
      break;
    case "response.output_audio.delta": {
      if (items.discarded.has(ev.item_id)) break;
      const bytes = fromBase64(ev.delta);
      const n = bytes.length >> 1;
      M.receivedAudioSamples += n;
      remember(items.assistant, ev.item_id);
      items.pending.add(ev.item_id);
      audio.play(bytes.buffer, ev.item_id);
      break;
    }
    case "response.output_audio.done":
      remember(items.done, ev.item_id);
      audio.endItem(ev.item_id);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      agentDelta(ev.response_id, ev.delta || "");
      break;
    case "conversation.item.input_audio_transcription.completed":
      userFinal(ev.item_id, ev.transcript, null);
      break;
    case "conversation.item.input_audio_transcription.failed":
      toast((ev.error && ev.error.message) || "your words could not be transcribed");
      break;
    case "error": {
      const err = ev.error || {};
      const warning = err.code === "unsupported_feature";
      toast(err.message || "server error", { warning });
      break;
    }
    default:
  }
}

// ------------------------------------------------------------------ connection

function onTransportClose({ code, reason }) {
  toast(`Connection closed (${code}${reason ? `: ${reason}` : ""})`);
  stop();
}

const ws = new RealtimeClient({ onEvent: onServerEvent, onClose: onTransportClose });
const rtc = new WebRTCClient({
  onEvent: onServerEvent,
  onClose: onTransportClose,
  onRemoteStream(stream) {
    audio.playRemote(stream);
  },
});
let rt = ws; // the transport in use

function wantWebRTC() {
  return query.get("transport") !== "websocket" && typeof RTCPeerConnection === "function";
}

function abortError() {
  const e = new Error("stopped");
  e.name = "AbortError";
  return e;
}

/** WebRTC first; the WebSocket if it fails (never once `attempt` was stopped). */
async function openTransport(attempt) {
  const { signal } = attempt;
  const key = apiKey();
  if (wantWebRTC()) {
    try {
      await rtc.connect({ key, session: sessionConfig(), micTrack: audio.micTrack,
                          fail: query.get("webrtc") === "fail", params: sessionParams(), signal });
      if (signal.aborted) throw abortError();
      rt = rtc;
      freshConversation = false;
      preOpen.length = 0; // the mic track carries the audio from here
      M.transport = "webrtc";
      M.callId = rtc.callId;
      return;
    } catch (e) {
      if (signal.aborted) throw abortError(); // Stop: no fallback
      rtc.close();
      M.webrtcError = redact((e && e.message) || String(e));
      toast(`WebRTC failed (${M.webrtcError}); using the WebSocket`, { warning: true });
    }
  }
  await ws.connect(realtimeUrl() + sessionParams(), key, signal);
  if (signal.aborted) {
    ws.close();
    throw abortError();
  }
  freshConversation = false;
  rt = ws;
  M.transport = "websocket";
}

// attempt: one per Start (an AbortController); Stop aborts it, and everything it was doing gives up
const conn = { running: false, mic: false, attempt: null };

function sessionConfig() {
  const lang = ui.language.value;
  const transcription = { model: "whisper-1" };
  if (lang === "en" || lang === "ko") transcription.language = lang;
  const voice = ui.voice.value === "auto" ? "alloy" : ui.voice.value;
  return {
    type: "realtime",
    audio: {
      input: { format: { type: "audio/pcm", rate: OUT_RATE }, transcription },
      output: { format: { type: "audio/pcm", rate: OUT_RATE }, voice },
    },
  };
}

function sendSessionUpdate() {
  rt.send({ type: "session.update", session: sessionConfig() });
}

/** Audio output + socket; the mic only when asked. Safe to call again while running. */
async function connect({ mic }) {
  if (!conn.running) {
    const problem = keyProblem(apiKey());
    if (problem) {
      toast(problem);
      return false;
    }
    conn.running = true;
    conn.attempt = new AbortController();
    conn.attempt.opening = null;
    setState("connecting");
    setButtons();
    resetItems();
    latency.newSession();
    preOpen.length = 0;
  }
  const attempt = conn.attempt;
  const live = () => conn.running && conn.attempt === attempt && !attempt.signal.aborted;
  if (mic && !conn.mic) {
    conn.mic = true; // Start turns into Stop at once, not once the audio is up
    setButtons();
  }
  try {
    await audio.init();
    if (!live()) return false;
    M.sampleRate = audio.sampleRate;
    if (mic && !audio.micOn) {
      await audio.startMic({ raw: ui.raw.checked });
      if (!live()) return false;
      if (rt === rtc && rtc.open) await rtc.setMic(audio.micTrack);
    }
    if (!rt.open) {
      if (!attempt.opening) {
        attempt.opening = openTransport(attempt).then(() => {
          if (!attempt.signal.aborted) sendSessionUpdate();
        }).finally(() => {
          attempt.opening = null;
        });
      }
      await attempt.opening;
    }
    if (!live()) return false; // stopped meanwhile
    M.connected = true;
    if (M.state === "connecting") setState("ready");
    watchdog.start();
    return true;
  } catch (e) {
    if (!live() || (e && e.name === "AbortError")) {
      if (live()) await stop();
      return false; // stopped meanwhile: that is no error
    }
    const msg = e && e.name === "NotAllowedError" ? "Microphone permission was denied"
      : e && e.name === "NotFoundError" ? "No microphone found" : (e && e.message) || String(e);
    toast(msg);
    await stop();
    return false;
  }
}

async function stop() {
  const wasRunning = conn.running;
  if (conn.attempt) conn.attempt.abort();
  conn.attempt = null;
  conn.running = false;
  conn.mic = false;
  watchdog.stop();
  ws.close();
  rtc.close();
  rt = ws;
  preOpen.length = 0;
  await audio.close();
  playedBase += lastPlayed;
  lastPlayed = 0;
  if (conn.running) return; // started again while the audio closed: leave the new session be
  M.connected = false;
  resetItems();
  levelShown = 0;
  ui.levelFill.style.transform = "scaleX(0)";
  ui.level.dataset.level = "0";
  if (wasRunning || M.state !== "off") setState("off");
  setButtons();
}

// ------------------------------------------------------------------ liveness
// A network that silently drops everything closes nothing: the socket (or data channel) just goes
// quiet, and the server's WebSocket pings are invisible to JS. So while connected the page makes
// sure it hears from the server: after PROBE_MS of silence it sends a probe the server answers at
// once (a retrieve of an item that does not exist: a small `item_not_found` error, no side effect,
// recognised by its event_id and not shown); no answer within LOST_MS of the probe: the connection
// is lost. Only an unanswered probe counts, so a throttled background tab cannot trip it.
const PROBE_MS = 5000;
const LOST_MS = Number(query.get("liveness_ms")) || 10000;
const PROBE_ID = "moksori_liveness_";

const watchdog = {
  timer: 0,
  heard: 0, // performance.now() of the last server event
  probeAt: 0, // when the unanswered probe went out (0: none)
  n: 0,
  start() {
    if (this.timer) return; // already watching this session
    this.heard = performance.now();
    this.probeAt = 0;
    this.timer = setInterval(() => this.tick(), 1000);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = 0;
    this.probeAt = 0;
  },
  onEvent() {
    this.heard = performance.now();
    this.probeAt = 0;
  },
  tick() {
    if (!conn.running || !rt.open) return;
    const now = performance.now();
    if (this.probeAt) {
      if (now - this.probeAt > LOST_MS) {
        toast(`Connection lost: no answer from the server for ${Math.round((now - this.heard) / 1000)} s`);
        stop();
      }
      return;
    }
    if (now - this.heard < PROBE_MS) return;
    this.n += 1;
    try {
      if (rt.send({ type: "conversation.item.retrieve", item_id: `${PROBE_ID}probe`,
                    event_id: `${PROBE_ID}${this.n}` })) this.probeAt = now;
    } catch {
      /* not sendable now: try again next tick */
    }
  },
};

/** A probe's answer: it only proves the server is there. */
function isProbeAnswer(ev) {
  return ev.type === "error" && ev.error && typeof ev.error.event_id === "string" &&
    ev.error.event_id.startsWith(PROBE_ID);
}

function setButtons() {
  ui.start.hidden = conn.mic;
  ui.start.textContent = conn.running ? "Start mic" : "Start";
  ui.stop.hidden = !conn.running;
}

// ------------------------------------------------------------------ UI wiring

ui.start.addEventListener("click", () => {
  connect({ mic: true });
});
ui.stop.addEventListener("click", () => {
  stop();
});
ui.fresh.addEventListener("click", async () => {
  // end this conversation; the next one starts without the earlier ones in the agent's memory
  // (they stay stored under this browser's user id)
  const mic = conn.mic;
  const wasRunning = conn.running;
  await stop();
  ui.user.textContent = "";
  ui.agent.textContent = "";
  freshConversation = true;
  M.freshConversations = (M.freshConversations || 0) + 1;
  if (wasRunning) await connect({ mic });
});

ui.form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  ui.text.value = "";
  if (!(await connect({ mic: conn.mic }))) return;
  const item = { type: "conversation.item.create",
                 item: { type: "message", role: "user", content: [{ type: "input_text", text }] } };
  const size = utf8Length(JSON.stringify(item));
  if (size > rt.maxMessageBytes) { // it would fail to send (WebRTC) or be refused (WebSocket)
    toast(`That message is too long to send (${Math.ceil(size / 1024)} KB; this connection takes at most ` +
          `${Math.floor(rt.maxMessageBytes / 1024)} KB). Shorten it.`);
    ui.text.value = text.slice(0, 2000); // give back the start of it, to edit (not megabytes)
    return;
  }
  if (M.state === "speaking" || M.state === "thinking") rt.send({ type: "output_audio_buffer.clear" });
  if (!rt.send(item)) {
    toast("Not connected: the message was not sent");
    return;
  }
  typedLine(text);
  rt.send({ type: "response.create" });
});

ui.language.addEventListener("change", () => {
  store.set("language", ui.language.value);
  sendSessionUpdate();
});
ui.voice.addEventListener("change", () => {
  store.set("voice", ui.voice.value);
  sendSessionUpdate();
});
$("#settings-form").addEventListener("submit", (ev) => ev.preventDefault());
function checkKey({ quiet = false } = {}) {
  const problem = keyProblem(apiKey());
  ui.key.setCustomValidity(problem);
  ui.key.setAttribute("aria-invalid", problem ? "true" : "false");
  ui.key.title = problem;
  if (problem && !quiet) toast(problem);
  return !problem;
}
ui.key.addEventListener("change", () => {
  if (checkKey()) store.set("key", apiKey()); // an unusable key is not kept
});
checkKey({ quiet: true });
ui.raw.addEventListener("change", () => store.set("raw", ui.raw.checked ? "1" : "0"));

window.addEventListener("pagehide", () => {
  ws.close();
  rtc.close();
});

/** For tests and the console: send a raw client event on the open connection. */
M.send = (event) => rt.send(event);

setButtons();
document.documentElement.dataset.ready = "1";
