// Streaming band-limited resampler (windowed sinc, table-driven), shared by both worklets.
//
// Works for any pair of rates: the ratio comes from the real rates handed in, never assumed.
// Output sample n sits at input position pos = n * step (step = inRate / outRate); it is the
// sum of the `taps` input samples around pos, weighted by a Blackman-windowed sinc whose cutoff
// is below the lower of the two Nyquist frequencies (so downsampling does not alias).

const PHASES = 256;

function kernelTable(taps, cutoff) {
  const half = taps / 2;
  const table = new Float32Array((PHASES + 1) * taps);
  for (let ph = 0; ph <= PHASES; ph++) {
    const frac = ph / PHASES;
    let sum = 0;
    for (let k = 0; k < taps; k++) {
      // distance from the output position to input sample (floor(pos) - half + 1 + k)
      const d = k - half + 1 - frac;
      const x = cutoff * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = (d + half) / taps; // 0..1 across the window
      const win = w <= 0 || w >= 1 ? 0 : 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
      const v = cutoff * sinc * win;
      table[ph * taps + k] = v;
      sum += v;
    }
    for (let k = 0; k < taps; k++) table[ph * taps + k] /= sum || 1; // unity gain at DC
  }
  return table;
}

export class Resampler {
  constructor(inRate, outRate, taps = 24) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate;
    this.taps = taps;
    this.half = taps / 2;
    this.table = kernelTable(taps, 0.92 * Math.min(1, outRate / inRate));
    this.buf = new Float32Array(Math.max(4096, taps * 4));
    this.reset();
  }

  /** Forget all history (after a flush). */
  reset() {
    this.buf.fill(0);
    this.len = this.half - 1; // zero history so the first output lines up with the first input
    this.pos = this.half - 1;
  }

  /** Input samples still needed before `nOut` more outputs can be produced. */
  needed(nOut) {
    if (nOut <= 0) return 0;
    const last = this.pos + (nOut - 1) * this.step;
    return Math.max(0, Math.floor(last) + this.half + 1 - this.len);
  }

  /** Append input samples (Float32Array or a subarray). */
  push(input) {
    const n = input.length;
    if (this.len + n > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + n));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += n;
  }

  /** Write up to `max` output samples into out[offset...]; returns how many were written. */
  pull(out, offset = 0, max = out.length - offset) {
    const { buf, table, taps, half, step } = this;
    let pos = this.pos;
    let n = 0;
    while (n < max) {
      const i = Math.floor(pos);
      if (i + half >= this.len) break;
      const frac = pos - i;
      const row = Math.round(frac * PHASES) * taps;
      const start = i - half + 1;
      let acc = 0;
      for (let k = 0; k < taps; k++) acc += buf[start + k] * table[row + k];
      out[offset + n] = acc;
      n++;
      pos += step;
    }
    // drop input that no future output can reach
    const drop = Math.floor(pos) - half + 1;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      pos -= drop;
    }
    this.pos = pos;
    return n;
  }

  /** Convenience for whole blocks: push then pull everything available. */
  process(input) {
    this.push(input);
    const out = new Float32Array(Math.ceil((this.len - this.pos) / this.step) + 2);
    const n = this.pull(out);
    return out.subarray(0, n);
  }
}
