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
    if (!this.ready) this.ready = this.setup().catch((e) => {
      this.ready = null;
      throw e;
    });
    return this.ready;
  }

  async setup() {
    const ctx = new AudioContext({ latencyHint: "interactive" });
    this.ctx = ctx;
    await ctx.audioWorklet.addModule(new URL("capture-worklet.js", BASE));
    await ctx.audioWorklet.addModule(new URL("playback-worklet.js", BASE));
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
    if (!this.micReady) this.micReady = this.openMic(raw).catch((e) => {
      this.micReady = null;
      throw e;
    });
    return this.micReady;
  }

  async openMic(raw) {
    await this.init();
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
    if (!ctx) { // closed while the permission prompt was up
      for (const track of stream.getTracks()) track.stop();
      return;
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
