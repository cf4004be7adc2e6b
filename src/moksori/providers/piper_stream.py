"""A Piper voice's graph cut in three, so a sentence's audio streams out while the rest is made.

A Piper (VITS) voice turns phoneme ids into a latent of one frame per `hop` samples (text
encoder + duration predictor, over the phonemes), maps it back through a normalising flow, and
decodes it to audio with HiFi-GAN. The flow and the decoder are convolutions over frames: an
output frame depends on a fixed number of frames either side (the packaged voice: ±32 for the
flow, ±11 for the decoder; measured at load for any voice, `reach`). So a window of the latent
run with that much context on each side gives the samples the whole-sentence run gives there,
to float rounding (max abs diff ~1e-6), and the windows join with no seam: no crossfade is
needed (one over identical samples would change nothing).

`StreamingVoice.audio(ids, ...)` runs the encoder on the whole sentence (it is cheap and needs
every phoneme for the durations), the flow on just enough frames for the first window, decodes
~0.19 s of audio and yields it, then runs the flow once over the rest and decodes it in windows
that grow (16, 48, then the rest, in frames): the context re-run at the seams costs ~20 % more
compute over the sentence (real-time factor 0.096 -> 0.116, `benchmarks/piper_stream.py`).

The cut needs the `onnx` package (to extract the three subgraphs in memory at load time); the
weights are the voice file's own. A voice whose graph does not have the standard Piper export's
shape (multi-speaker voices feed a speaker embedding to the decoder) is not cut:
`split_voice` returns None with the reason, and the caller keeps the one-shot path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

# Tensor names of the standard Piper (VITS) export: the decoder's input is `z * y_mask`; the
# flow's inputs are the sampled prior `z_p` and the frame mask. Checked against the graph.
FLOW_IN = ("/Add_output_0", "/Cast_2_output_0")
DEC_IN = "/Mul_7_output_0"
TEXT_IN = ("input", "input_lengths", "scales")
FIRST_FRAMES = 16  # the first window: 16 x 256 samples = 0.19 s at 22,050 Hz
GROWTH = 3  # each later window is this many times the one before (the last takes the rest)


@dataclass(frozen=True)
class SplitGraphs:
    """The three serialised subgraphs of one voice."""
    encoder: bytes  # phoneme ids, lengths, scales -> z_p, y_mask
    flow: bytes  # z_p, y_mask -> z (masked)
    decoder: bytes  # z -> audio


def split_voice(path: Path) -> SplitGraphs | str:
    """The voice's graph cut at the flow and at the decoder, or why it cannot be."""
    try:
        import onnx
        import onnx.utils
    except ImportError:
        return "the onnx package is not installed"
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises protobuf's own error types
        return f"cannot read the graph: {e}"
    graph = model.graph
    inputs = [i.name for i in graph.input]
    if inputs != list(TEXT_IN):
        return f"the graph's inputs are {inputs} (a multi-speaker voice?), not {list(TEXT_IN)}"
    produced = {o for n in graph.node for o in n.output}
    if not all(t in produced for t in (*FLOW_IN, DEC_IN)):
        return "the graph is not a standard Piper export (tensor names differ)"
    initialisers = {i.name for i in graph.initializer}
    dec_nodes = [n for n in graph.node if n.name.startswith("/dec/")]
    inside = {o for n in dec_nodes for o in n.output}
    outside = {i for n in dec_nodes for i in n.input if i and i not in inside and i not in initialisers}
    if outside != {DEC_IN}:
        return f"the decoder takes {sorted(outside)}, not only {DEC_IN}"
    try:
        ex = onnx.utils.Extractor(model)
        encoder = ex.extract_model(list(TEXT_IN), list(FLOW_IN))
        flow = ex.extract_model(list(FLOW_IN), [DEC_IN])
        decoder = ex.extract_model([DEC_IN], [graph.output[0].name])
    except Exception as e:  # noqa: BLE001
        return f"cannot cut the graph: {e}"
    for part, want in ((flow, set(FLOW_IN)), (decoder, {DEC_IN})):
        got = {i.name for i in part.graph.input}
        if got != want:
            return f"a cut leaks: the subgraph needs {sorted(got)}"
    return SplitGraphs(encoder.SerializeToString(), flow.SerializeToString(), decoder.SerializeToString())


def windows(frames: int, first: int = FIRST_FRAMES, growth: int = GROWTH) -> list[tuple[int, int]]:
    """Output frame ranges [start, end) that tile `frames`: `first`, then growing, the last
    taking what is left when that is under one and a half of the next."""
    out: list[tuple[int, int]] = []
    start, size = 0, max(1, first)
    while start < frames:
        end = frames if frames - start < size * 3 // 2 else start + size
        out.append((start, end))
        start, size = end, size * max(1, growth)
    return out


def reach(session: ort.InferenceSession, feed: dict[str, np.ndarray], name: str, frames: int,
          hop: int) -> int:
    """How many frames either side of a frame change the model's output: perturb the middle
    frame of a random latent and see how far the output moves (at least 1)."""
    x = feed[name]
    mid = frames // 2
    y = x.copy()
    y[:, :, mid] += 1.0
    a = np.asarray(session.run(None, feed)[0])
    b = np.asarray(session.run(None, {**feed, name: y})[0])
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])  # time is the last axis
    changed = np.nonzero(np.abs(a - b).max(axis=0) > 0)[0]
    if len(changed) == 0:
        return 1
    if changed[0] == 0 or changed[-1] == a.shape[1] - 1:
        return frames  # it reaches the probe's edges: as far as it could tell, and more
    step = a.shape[1] // frames  # output samples per frame: 1 for the flow, hop for the decoder
    lo = mid - changed[0] / step
    hi = (changed[-1] + 1) / step - (mid + 1)
    return max(1, math.ceil(max(lo, hi)))


class StreamingVoice:
    """Phoneme ids -> raw float audio in windows, from the three cut sessions."""

    def __init__(self, graphs: SplitGraphs, options: ort.SessionOptions, hop: int) -> None:
        def open_part(b: bytes) -> ort.InferenceSession:
            return ort.InferenceSession(b, sess_options=options, providers=["CPUExecutionProvider"])

        self.encoder = open_part(graphs.encoder)
        self.flow = open_part(graphs.flow)
        self.decoder = open_part(graphs.decoder)
        self.hop = hop
        # the latent's width (the export leaves it unnamed): from the encoder on three ids
        z_p, _ = self.latent([1, 0, 2], np.asarray([0.0, 1.0, 0.0], dtype=np.float32))
        self.channels = int(z_p.shape[1])
        # probes wider than the reach they measure (flow 32, decoder 11 frames): ~0.1 s at load
        rng = np.random.default_rng(0)
        z = rng.standard_normal((1, self.channels, 160)).astype(np.float32)
        mask = np.ones((1, 1, 160), dtype=np.float32)
        self.flow_reach = reach(self.flow, {FLOW_IN[0]: z, FLOW_IN[1]: mask}, FLOW_IN[0], 160, hop)
        self.dec_reach = reach(self.decoder, {DEC_IN: np.ascontiguousarray(z[:, :, :64])}, DEC_IN, 64, hop)
        self.first_frames = FIRST_FRAMES
        self.growth = GROWTH

    def _flow(self, z_p: np.ndarray, mask: np.ndarray, lo: int, hi: int) -> np.ndarray:
        feed = {FLOW_IN[0]: np.ascontiguousarray(z_p[:, :, lo:hi]), FLOW_IN[1]: np.ascontiguousarray(mask[:, :, lo:hi])}
        return np.asarray(self.flow.run(None, feed)[0])

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.decoder.run(None, {DEC_IN: np.ascontiguousarray(z)})[0]).reshape(-1)

    def latent(self, ids: list[int], scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = {"input": np.asarray([ids], dtype=np.int64),
                "input_lengths": np.asarray([len(ids)], dtype=np.int64), "scales": scales}
        z_p, mask = self.encoder.run(None, feed)
        return np.asarray(z_p), np.asarray(mask)

    def audio(self, ids: list[int], scales: np.ndarray, stop: threading.Event | None = None
              ) -> Iterator[np.ndarray]:
        """Raw audio of one sentence, window by window (concatenated: the whole-sentence output)."""
        z_p, mask = self.latent(ids, scales)
        yield from self.decode(z_p, mask, stop)

    def decode(self, z_p: np.ndarray, mask: np.ndarray, stop: threading.Event | None = None
               ) -> Iterator[np.ndarray]:
        frames = z_p.shape[2]
        cf, cd, hop = self.flow_reach, self.dec_reach, self.hop
        plan = windows(frames, self.first_frames, self.growth)
        # z over [z_lo, z_lo + len): valid where every frame it depends on was in the flow's input
        z_lo = 0
        z = self._flow(z_p, mask, 0, min(frames, plan[0][1] + cd + cf))
        for k, (start, end) in enumerate(plan):
            if stop is not None and stop.is_set():
                return
            if k == 1:  # the flow once over the rest, with its context
                z_lo = max(0, start - cd - cf)
                z = self._flow(z_p, mask, z_lo, frames)
            lo, hi = max(0, start - cd), min(frames, end + cd)
            out = self._decode(z[:, :, lo - z_lo:hi - z_lo])
            yield out[(start - lo) * hop:(end - lo) * hop]


@dataclass
class Leveller:
    """One gain for a whole sentence, chosen before its first sample exists, and a soft limit.

    Piper scales each sentence so its loudest sample is full scale, which needs the whole
    sentence first. Streaming cannot wait for it, so the gain comes from a reference peak that
    follows the peaks this voice has produced (quickly up, slowly down, so about their 90th
    percentile), seeded with the packaged voice's (0.63 over the 49 English sentences of
    shared/speech: median 0.49, max 0.78). A sentence louder than that goes through a soft knee
    above 0.9 of full scale instead of clipping. The raw output's loudness varies less between
    sentences than the peak-normalised one's (active RMS s.d. 1.3 dB against 1.7 dB), so
    sentences no longer jump in level with their loudest plosive.
    """
    peak_ref: float = 0.63
    knee: float = 0.9

    def gain(self) -> float:
        return 1.0 / max(self.peak_ref, 1e-3)

    def observe(self, peak: float) -> None:
        if not math.isfinite(peak) or peak <= 1e-4:
            return
        rate = 0.5 if peak > self.peak_ref else 0.05
        self.peak_ref += rate * (peak - self.peak_ref)

    def apply(self, x: np.ndarray, gain: float) -> np.ndarray:
        return soft_limit(x * gain, self.knee)


def soft_limit(x: np.ndarray, knee: float = 0.9) -> np.ndarray:
    """Identity up to `knee`, then a tanh curve that reaches full scale only at infinity
    (continuous, with a continuous slope: no corner to hear)."""
    y = np.asarray(x, dtype=np.float32).copy()
    over = np.abs(y) > knee
    if over.any():
        room = 1.0 - knee
        a = np.abs(y[over])
        y[over] = np.sign(y[over]) * (knee + room * np.tanh((a - knee) / room))
    return y
