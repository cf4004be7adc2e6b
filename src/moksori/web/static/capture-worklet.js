// Microphone capture: mono mix -> resample (context rate -> 24 kHz) -> PCM16 chunks of ~40 ms.
// Posts {type: "chunk", pcm: ArrayBuffer (Int16 LE), level: rms 0..1, peak} to the main thread.
import { Resampler } from "./resampler.js";

const OUT_RATE = 24000;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.chunkSamples = Math.round(OUT_RATE * (opts.chunkMs || 40) / 1000);
    // `sampleRate` is the AudioContext's real rate (a worklet global)
    this.resampler = new Resampler(sampleRate, OUT_RATE, 24);
    this.mono = new Float32Array(128);
    this.scratch = new Float32Array(256);
    this.pending = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSq = 0;
    this.peak = 0;
    this.count = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no source connected yet
    const frames = input[0].length;
    if (this.mono.length < frames) this.mono = new Float32Array(frames);
    const mono = this.mono.subarray(0, frames);
    mono.set(input[0]);
    if (input.length > 1) {
      for (let c = 1; c < input.length; c++) {
        const ch = input[c];
        for (let i = 0; i < frames; i++) mono[i] += ch[i];
      }
      const g = 1 / input.length;
      for (let i = 0; i < frames; i++) mono[i] *= g;
    }
    this.resampler.push(mono);
    for (;;) {
      const n = this.resampler.pull(this.scratch);
      if (n === 0) break;
      this.take(this.scratch, n);
      if (n < this.scratch.length) break;
    }
    return true;
  }

  take(samples, n) {
    for (let i = 0; i < n; i++) {
      let s = samples[i];
      if (s > 1) s = 1;
      else if (s < -1) s = -1;
      this.sumSq += s * s;
      const a = s < 0 ? -s : s;
      if (a > this.peak) this.peak = a;
      this.pending[this.filled++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
      this.count++;
      if (this.filled === this.chunkSamples) this.flush();
    }
  }

  flush() {
    const pcm = this.pending.buffer;
    const rms = Math.sqrt(this.sumSq / this.filled);
    this.port.postMessage({ type: "chunk", pcm, level: rms, peak: this.peak }, [pcm]);
    this.pending = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSq = 0;
    this.peak = 0;
  }
}

registerProcessor("moksori-capture", CaptureProcessor);
