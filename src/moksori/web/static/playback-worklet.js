// Reply playback: a jitter-tolerant queue of 24 kHz PCM16 chunks, resampled to the context rate.
//
// In:  {type: "push", pcm: ArrayBuffer, itemId}     queue audio (Int16 LE, 24 kHz mono)
//      {type: "end", itemId}                         no more audio will come for this item
//      {type: "flush", id}                           drop everything now (barge-in)
// Out: {type: "progress", played, itemId, itemPlayed, queued, active}   a few times a second
//      {type: "flushed", id, itemId, itemPlayed, dropped, items}        answer to "flush"
//
// `played` counts 24 kHz samples actually handed to the output (the truncate position).
// Playback starts (and restarts after an underrun) once `prebufferMs` is queued, or at once
// when the item has ended, so a late network packet makes one short gap instead of crackles.
import { Resampler } from "./resampler.js";

const IN_RATE = 24000;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.prebuffer = Math.round(IN_RATE * (opts.prebufferMs ?? 80) / 1000);
    this.resampler = new Resampler(IN_RATE, sampleRate, 16);
    this.queue = []; // [{data: Float32Array, off, itemId}]
    this.queued = 0;
    this.ended = new Set();
    this.buffering = true;
    this.played = 0;
    this.itemId = null; // item at the head of playback
    this.itemPlayed = 0; // samples of that item played so far
    this.playedByItem = new Map();
    this.sinceReport = 0;
    this.reportEvery = Math.round(sampleRate * 0.05);
    this.wasActive = false;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "push") {
      const pcm = new Int16Array(msg.pcm);
      const data = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
      this.queue.push({ data, off: 0, itemId: msg.itemId || null });
      this.queued += data.length;
    } else if (msg.type === "end") {
      this.ended.add(msg.itemId || null);
      if (this.ended.size > 64) this.ended.delete(this.ended.values().next().value);
    } else if (msg.type === "flush") {
      this.flush(msg.id);
    }
  }

  flush(id) {
    const items = [];
    for (const seg of this.queue) if (!items.includes(seg.itemId)) items.push(seg.itemId);
    // the item being heard: the queue head, or the one that ran dry but has not ended
    let head = this.queue.length ? this.queue[0].itemId : null;
    if (head === null && this.itemId !== null && !this.ended.has(this.itemId)) head = this.itemId;
    const dropped = this.queued;
    const itemPlayed = head ? (this.playedByItem.get(head) || 0) : 0;
    this.queue = [];
    this.queued = 0;
    this.resampler.reset();
    this.buffering = true;
    this.itemId = null; // whatever was playing has been cut; a repeated flush reports nothing
    this.port.postMessage({ type: "flushed", id, itemId: head, itemPlayed, dropped, items, played: this.played });
    this.report(false);
  }

  /** Move up to n queued input samples into the resampler; returns how many moved. */
  feed(n) {
    let moved = 0;
    while (moved < n && this.queue.length) {
      const seg = this.queue[0];
      const take = Math.min(n - moved, seg.data.length - seg.off);
      this.resampler.push(seg.data.subarray(seg.off, seg.off + take));
      seg.off += take;
      moved += take;
      this.queued -= take;
      this.played += take;
      if (seg.itemId !== this.itemId) {
        this.itemId = seg.itemId;
        this.itemPlayed = this.playedByItem.get(seg.itemId) || 0;
      }
      this.itemPlayed += take;
      this.playedByItem.set(seg.itemId, this.itemPlayed);
      if (this.playedByItem.size > 64) this.playedByItem.delete(this.playedByItem.keys().next().value);
      if (seg.off >= seg.data.length) this.queue.shift();
    }
    return moved;
  }

  canStart() {
    if (this.queued === 0) return false;
    if (this.queued >= this.prebuffer) return true;
    const last = this.queue[this.queue.length - 1];
    return this.ended.has(last.itemId);
  }

  process(inputs, outputs) {
    const out = outputs[0];
    if (!out || out.length === 0) return true;
    const frames = out[0].length;
    if (this.buffering && this.canStart()) this.buffering = false;
    let written = 0;
    const ch0 = out[0];
    while (written < frames && !this.buffering) {
      const want = this.resampler.needed(frames - written);
      if (want > 0 && this.feed(want) < want && this.queued === 0) {
        // ran dry: play what we have, then wait for the prebuffer again
        this.buffering = true;
      }
      const n = this.resampler.pull(ch0, written, frames - written);
      written += n;
      if (n === 0) break;
    }
    if (written < frames) ch0.fill(0, written);
    for (let c = 1; c < out.length; c++) out[c].set(ch0);

    const active = !this.buffering || this.queued > 0;
    this.sinceReport += frames;
    if ((active && this.sinceReport >= this.reportEvery) || active !== this.wasActive) this.report(active);
    return true;
  }

  report(active) {
    this.sinceReport = 0;
    this.wasActive = active;
    this.port.postMessage({ type: "progress", played: this.played, itemId: this.itemId, itemPlayed: this.itemPlayed,
                            queued: this.queued, active });
  }
}

registerProcessor("moksori-playback", PlaybackProcessor);
