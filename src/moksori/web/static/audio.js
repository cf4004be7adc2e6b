// Audio in and out through two AudioWorklets (capture-worklet.js, playback-worklet.js).

const BASE = new URL(".", import.meta.url);

export class AudioEngine {
  /** hooks: {onChunk(ArrayBuffer pcm16 24 kHz, level), onProgress(msg), onRemoteChunk(pcm, level)} */
  constructor(hooks) {
    this.hooks = hooks;
    this.ctx = null;
    this.player = null;
    this.capture = null;
    this.source = null;
    this.stream = null;
    this.flushId = 0;
    this.flushWaiters = new Map();
    this.ready = null; // promise: context + worklets loaded
    this.micReady = null; // promise: microphone open
    this.remoteEl = null; // <audio> playing the WebRTC reply track
    this.remoteTap = null;
    this.remoteSource = null;
    this.generation = 0; // close() moves it on: work started before then is abandoned
  }

  /** The microphone's track (WebRTC sends it as is), or null. */
  get micTrack() {
    return this.stream ? this.stream.getAudioTracks()[0] || null : null;
  }

  /** WebRTC reply audio: an <audio> element plays it (the browser's echo canceller uses it as the
   *  reference; Chromium renders remote WebRTC audio only through a media element), and a tap
   *  in the AudioContext measures what is rendered (level, samples) for the page's counters. */
  playRemote(stream) {
    if (!this.remoteEl) {
      this.remoteEl = document.createElement("audio");
      this.remoteEl.autoplay = true;
      this.remoteEl.dataset.testid = "remote-audio";
      document.body.appendChild(this.remoteEl);
    }
    this.remoteEl.srcObject = stream;
    this.remoteEl.play().catch(() => {});
    this.stopTap();
    if (!this.ctx) return;
    this.remoteSource = this.ctx.createMediaStreamSource(stream);
    this.remoteTap = new AudioWorkletNode(this.ctx, "moksori-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { chunkMs: 40 },
    });
    this.remoteTap.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "chunk" && this.hooks.onRemoteChunk) this.hooks.onRemoteChunk(m.pcm, m.level);
    };
    this.remoteSource.connect(this.remoteTap);
  }

  stopTap() {
    if (this.remoteTap) {
      this.remoteTap.port.postMessage({ type: "stop" });
      this.remoteTap.port.onmessage = null;
      try {
        this.remoteSource.disconnect();
      } catch {
        /* gone */
      }
    }
    this.remoteTap = null;
    this.remoteSource = null;
  }

  stopRemote() {
    this.stopTap();
    if (this.remoteEl) {
      this.remoteEl.srcObject = null;
      this.remoteEl.remove();
      this.remoteEl = null;
    }
  }

  get sampleRate() {
    return this.ctx ? this.ctx.sampleRate : 0;
  }

  get micOn() {
    return this.stream !== null;
  }

  /** Audio context and the playback path (call from a click so audio may start). */
  init() {
    if (!this.ready) {
      const ready = this.setup().catch((e) => {
        if (this.ready === ready) this.ready = null;
        throw e;
      });
      this.ready = ready;
    }
    return this.ready;
  }

  async setup() {
    const ctx = new AudioContext({ latencyHint: "interactive" });
    this.ctx = ctx;
    const gone = () => {
      if (this.ctx === ctx) return;
      throw closedError();
    };
    try {
      await ctx.audioWorklet.addModule(new URL("capture-worklet.js", BASE));
      gone();
      await ctx.audioWorklet.addModule(new URL("playback-worklet.js", BASE));
    } catch (e) {
      gone(); // closed while loading: that, not the module, is why it failed
      throw e;
    }
    gone();
    const player = new AudioWorkletNode(ctx, "moksori-playback", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { prebufferMs: 80 },
    });
    player.port.onmessage = (e) => this.onPlayerMessage(e.data);
    player.connect(ctx.destination);
    this.player = player;
    if (ctx.state !== "running") await ctx.resume().catch(() => {});
  }

  /** Open the microphone. raw=true turns echo cancellation, noise suppression and AGC off. */
  startMic({ raw = false } = {}) {
    if (!this.micReady) {
      const micReady = this.openMic(raw).catch((e) => {
        if (this.micReady === micReady) this.micReady = null;
        throw e;
      });
      this.micReady = micReady;
    }
    return this.micReady;
  }

  async openMic(raw) {
    const generation = this.generation;
    if (!this.ctx) throw closedError(); // never re-create a context close() just closed
    await this.init();
    if (generation !== this.generation) throw closedError();
    const processing = !raw;
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: { ideal: 1 },
        echoCancellation: processing,
        noiseSuppression: processing,
        autoGainControl: processing,
      },
    });
    const ctx = this.ctx;
    if (!ctx || generation !== this.generation) { // closed while the permission prompt was up
      for (const track of stream.getTracks()) track.stop();
      throw closedError();
    }
    this.stream = stream;
    this.source = ctx.createMediaStreamSource(stream);
    // no outputs: Chromium still runs an output-less worklet node ("automatic pull")
    this.capture = new AudioWorkletNode(ctx, "moksori-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { chunkMs: 40 },
    });
    this.capture.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "chunk") this.hooks.onChunk(m.pcm, m.level, m.peak);
    };
    this.source.connect(this.capture);
  }

  stopMic() {
    if (this.capture) {
      this.capture.port.postMessage({ type: "stop" });
      this.capture.port.onmessage = null;
      try {
        this.source.disconnect();
      } catch {
        /* gone */
      }
    }
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    this.source = null;
    this.capture = null;
    this.micReady = null;
  }

  play(pcm, itemId) {
    if (!this.player) return;
    this.player.port.postMessage({ type: "push", pcm, itemId }, [pcm]);
  }

  endItem(itemId) {
    if (this.player) this.player.port.postMessage({ type: "end", itemId });
  }

  /** Drop queued playback now; resolves with {itemId, itemPlayed, dropped, items, played}. */
  flush() {
    if (!this.player) return Promise.resolve({ itemId: null, itemPlayed: 0, dropped: 0, items: [], played: 0 });
    const id = ++this.flushId;
    return new Promise((resolve) => {
      this.flushWaiters.set(id, resolve);
      this.player.port.postMessage({ type: "flush", id });
    });
  }

  onPlayerMessage(m) {
    if (m.type === "flushed") {
      const resolve = this.flushWaiters.get(m.id);
      this.flushWaiters.delete(m.id);
      if (resolve) resolve(m);
    }
    if (m.type === "progress" || m.type === "flushed") this.hooks.onProgress(m);
  }

  async close() {
    this.generation++;
    this.stopMic();
    this.stopRemote();
    for (const resolve of this.flushWaiters.values()) resolve({ itemId: null, itemPlayed: 0, dropped: 0, items: [] });
    this.flushWaiters.clear();
    const ctx = this.ctx;
    this.ctx = null;
    this.player = null;
    this.ready = null;
    if (ctx) await ctx.close().catch(() => {});
  }
}

/** What init()/startMic() reject with when close() overtook them. */
function closedError() {
  const e = new Error("the audio engine was closed");
  e.name = "AbortError";
  return e;
}
