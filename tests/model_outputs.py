"""The embedded models' outputs on fixed inputs, their recorded references, and the comparison.

One module for three callers:
* scripts/record_model_references.py records the references once, from each model's reference
  path, into tests/reference/*.json;
* tests/test_model_references.py computes the same outputs through Moksori's own providers on
  the machine it runs on, and under qemu-user emulating an AVX2-only CPU, and compares;
* that emulated run is this file run as a script (`python tests/model_outputs.py child ...`),
  which prints JSON.

Tolerances (each justified by measurements in the comments) live here, beside the comparisons.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE_DIR = HERE / "reference"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from speech import load16k, utt  # noqa: E402

# --------------------------------------------------------------------------- inputs

# smart-turn: finished sentences, whole and cut at 55 % (tel_001 and tel_006 are the clips that an
# AVX2 CPU without VNNI scored "complete" when cut, on the fused int8 path)
SMART_TURN_CLIPS = ["tel_001", "tel_003", "tel_006", "tel_011", "tel_012", "tel_013", "tel_015", "tel_016",
                    "ko_001", "en_003", "en_004"]
CUT = 0.55
SILERO_CLIPS = ["en_002", "tel_001", "ko_001", "en_011"]
PIPER_TEXTS = ["The weather is lovely today, so we are going for a walk in the park.",
               "Please call me back tomorrow morning before the meeting starts."]
# 8k: the 8 kHz telephone copy (what a phone call gives Whisper)
WHISPER_CLIPS = ["en_001", "en_002", "en_003", "en_004", "en_005", "en_010", "8k:tel_001", "8k:tel_011", "ko_001"]
LLM_SYSTEM = "You are a friendly voice assistant. Answer in one or two short sentences."
LLM_PROMPTS = ["What is the capital of France?", "Give me one tip for sleeping better.",
               "How far away is the moon?", "Tell me a short joke about cats."]
LLM_TOKENS = 32


def clip(name: str) -> np.ndarray:
    if name.startswith("8k:"):
        return load16k(utt(name[3:]).path_8k)
    return load16k(utt(name).path)


# --------------------------------------------------------------------------- outputs


def smart_turn_outputs(predict, names: list[str] = SMART_TURN_CLIPS) -> dict[str, list[float]]:
    """name -> [P(complete) of the whole clip, of the clip cut at 55 %]."""
    out = {}
    for name in names:
        audio = clip(name)
        out[name] = [float(predict(audio)), float(predict(audio[: int(CUT * len(audio))]))]
    return out


def silero_outputs(vad, names: list[str] = SILERO_CLIPS) -> dict[str, list[float]]:
    """name -> P(speech) of every 32 ms frame, one stream per clip."""
    out = {}
    for name in names:
        audio = clip(name)
        stream = vad.stream()
        out[name] = [float(stream(audio[i:i + 512])) for i in range(0, len(audio) - 511, 512)]
    return out


def piper_outputs(voice, texts: list[str] = PIPER_TEXTS) -> dict[str, dict[str, Any]]:
    """text -> sample count and 10 ms RMS envelope, with Piper's noise off (noise_scale and noise_w 0:
    its sampling is random; this checks the voice's arithmetic, which the noise only rides on)."""
    from piper.config import SynthesisConfig

    syn = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    out = {}
    for text in texts:
        audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, syn_config=syn)])
        hop = voice.config.sample_rate // 100
        n = len(audio) // hop
        env = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
        out[text] = {"samples": int(len(audio)), "envelope": [round(float(x), 6) for x in env]}
    return out


def whisper_outputs(stt, names: list[str] = WHISPER_CLIPS) -> dict[str, dict[str, Any]]:
    from moksori.providers.base import STTOptions

    out = {}
    for name in names:
        lang = "ko" if "ko_" in name else "en"
        t = stt.transcribe_array(clip(name), STTOptions(language=lang))
        out[name] = {"text": t.text, "no_speech_prob": round(float(t.no_speech_prob), 6)}
    return out


def llm_outputs(llm, prompts: list[str] = LLM_PROMPTS, n_tokens: int = LLM_TOKENS,
                forced: dict[str, list[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Greedy decoding through llama.cpp, the prompt rendered by Moksori's provider.

    Per step: the best token, its margin over the second best and its log-probability (raw logits
    can all shift together without changing anything). With `forced`, the given tokens are fed
    instead of the best ones (teacher forcing), so a near-tie that flips one token does not hide
    every step after it: each step is compared with the reference's same step."""
    from moksori.providers.base import ChatRequest, Message

    ll = llm._llm
    n_vocab = ll.n_vocab()
    eos = {ll.token_eos()}
    end = ll.tokenize(b"<|im_end|>", add_bos=False, special=True)  # ChatML's end of turn, if the model has it
    if len(end) == 1:
        eos.add(end[0])
    out = {}
    with llm._lock:
        for prompt in prompts:
            req = ChatRequest(messages=(Message("system", LLM_SYSTEM), Message("user", prompt)))
            ll.reset()
            ll.eval(llm._tokens(llm.render(req)))
            feed = (forced or {}).get(prompt)
            best, margins, logprobs, fed = [], [], [], []
            for step in range(len(feed) if feed else n_tokens):
                logits = np.ctypeslib.as_array(ll._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64)
                logits -= logits.max() + np.log(np.exp(logits - logits.max()).sum())  # log-probabilities
                top2 = np.argsort(logits)[-2:]
                tok = int(top2[1])
                nxt = feed[step] if feed else tok
                best.append(tok)
                margins.append(round(float(logits[top2[1]] - logits[top2[0]]), 4))
                logprobs.append(round(float(logits[nxt]), 4))
                fed.append(nxt)
                if nxt in eos:
                    break
                ll.eval([nxt])
            out[prompt] = {"tokens": best, "margins": margins, "logprobs": logprobs,
                           "text": ll.detokenize(fed).decode("utf-8", errors="replace")}
        ll.reset()
    return out


# --------------------------------------------------------------------------- references


def load_reference(model: str) -> dict[str, Any]:
    return json.loads((REFERENCE_DIR / f"{model}.json").read_text(encoding="utf-8"))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


# smart-turn's output passes through a uint8 QuantizeLinear: its logit moves in steps of 0.0394.
# The float reference path matched bit for bit on AVX-512 and on emulated AVX2 (0 steps); the
# fused int8 path drifted 1.3 logits (33 steps) with VNNI and 2.1 / 4.2 logits without (the
# saturating kernel). Six steps leave room for float rounding moving a few activations across a
# quantization boundary, and fail on every fused path measured.
SMART_TURN_LOGIT_TOL = 0.25


def compare_smart_turn(ref: dict[str, list[float]], got: dict[str, list[float]],
                       tol: float = SMART_TURN_LOGIT_TOL) -> list[str]:
    problems = []
    for name, pair in got.items():
        for kind, r, g in zip(("whole", f"cut at {CUT:.0%}"), ref[name], pair):
            if g is not None and abs(_logit(g) - _logit(r)) > tol:
                problems.append(f"smart-turn {name} {kind}: {g:.4f}, reference {r:.4f}")
    return problems


# Silero is a float model (Conv + LSTM): across graph levels and ISAs its frame probabilities
# moved by < 1e-6. A threshold decision (0.5) needs far less than 1e-3 to be stable.
SILERO_TOL = 1e-3


def compare_silero(ref: dict[str, list[float]], got: dict[str, list[float]], tol: float = SILERO_TOL) -> list[str]:
    problems = []
    for name, probs in got.items():
        r = np.asarray(ref[name])
        g = np.asarray(probs)
        if len(r) != len(g):
            problems.append(f"silero {name}: {len(g)} frames, reference {len(r)}")
            continue
        worst = int(np.argmax(np.abs(r - g)))
        if abs(r[worst] - g[worst]) > tol:
            problems.append(f"silero {name} frame {worst}: {g[worst]:.5f}, reference {r[worst]:.5f}")
    return problems


# Piper (float VITS): float rounding moved samples by < 2e-5 between graph levels. Its durations
# are rounded up to whole 256-sample frames, so drift shows first as a different length; the
# 10 ms RMS envelope (speech peaks ~0.1-0.3) must stay within 2e-3.
PIPER_ENVELOPE_TOL = 2e-3


def compare_piper(ref: dict[str, dict], got: dict[str, dict], tol: float = PIPER_ENVELOPE_TOL) -> list[str]:
    problems = []
    for text, g in got.items():
        r = ref[text]
        if g["samples"] != r["samples"]:
            problems.append(f"piper {text[:30]!r}: {g['samples']} samples, reference {r['samples']}")
            continue
        d = np.abs(np.asarray(g["envelope"]) - np.asarray(r["envelope"]))
        if d.max() > tol:
            problems.append(f"piper {text[:30]!r}: envelope off by {d.max():.5f} at {int(d.argmax()) * 10} ms")
    return problems


# Whisper float32: the same tokens on every oneDNN ISA tried and with MKL, no-speech probability
# within 2e-6. The text must match exactly (punctuation included: the end-of-turn cue reads it);
# 0.01 on the no-speech probability is far above rounding and far below its thresholds (0.6, 0.9).
# Whisper int8 (the default): every ISA class rounds differently. Measured between AVX-512 VNNI,
# AVX-VNNI, AVX-512, AVX2, AVX and SSE4.1 kernels and float32: the same words on every clip, but
# punctuation changed on 2 of 44 and the no-speech probability by up to 0.24. So int8 must give
# the reference's words (case and punctuation aside) and a no-speech probability within 0.3.
WHISPER_NO_SPEECH_TOL = 0.01
WHISPER_INT8_NO_SPEECH_TOL = 0.3


def words(text: str) -> list[str]:
    return "".join(ch.lower() if ch.isalnum() or ch.isspace() else " " for ch in text).split()


def compare_whisper(ref: dict[str, dict], got: dict[str, dict], *, exact: bool = True) -> list[str]:
    tol = WHISPER_NO_SPEECH_TOL if exact else WHISPER_INT8_NO_SPEECH_TOL
    problems = []
    for name, g in got.items():
        r = ref[name]
        if (g["text"] != r["text"]) if exact else (words(g["text"]) != words(r["text"])):
            problems.append(f"whisper {name}: {g['text']!r}, reference {r['text']!r}")
        elif abs(g["no_speech_prob"] - r["no_speech_prob"]) > tol:
            problems.append(f"whisper {name}: no-speech {g['no_speech_prob']:.4f}, reference {r['no_speech_prob']:.4f}")
    return problems


# llama.cpp: its AVX2 and AVX-512 builds (SmolLM2 Q4_1) moved the margin between the two best
# tokens by up to 0.51 and the chosen token's log-probability by up to 0.36 (the rounding of the
# Q8 activations differs); free-running greedy text parted only at a step whose margin was 0.0007.
# Compared step by step on the reference tokens (teacher forcing): the best token must be the
# reference's wherever the reference's margin is at least 1.0, and the reference token's
# log-probability must stay within 1.0.
LLM_TOL = 1.0


def compare_llm(ref: dict[str, dict], got: dict[str, dict], tol: float = LLM_TOL) -> list[str]:
    problems = []
    for prompt, g in got.items():
        r = ref[prompt]
        for step, (rt, gt) in enumerate(zip(r["tokens"], g["tokens"])):
            if rt != gt and r["margins"][step] >= tol:
                problems.append(f"llm {prompt!r} step {step}: best token {gt}, reference {rt} "
                                f"(reference margin {r['margins'][step]:.2f})")
                break
            if abs(g["logprobs"][step] - r["logprobs"][step]) > tol:
                problems.append(f"llm {prompt!r} step {step}: log-probability {g['logprobs'][step]:.3f}, "
                                f"reference {r['logprobs'][step]:.3f}")
                break
    return problems


# --------------------------------------------------------------------------- the emulated child


def _child(argv: list[str]) -> None:
    """Compute outputs in this process and print them as one JSON line (the tests run this under qemu).

    python tests/model_outputs.py child [--fused] [smart-turn=CLIP/cut,...] [silero=CLIP,...] [piper=TEXT|...]
                                        [whisper=CLIP,...]

    smart-turn inputs are CLIP/whole or CLIP/cut; --fused opens smart-turn with ONNX Runtime's
    ORT_ENABLE_ALL (the setting before issue 8) instead of Moksori's own session.
    """
    import time

    from moksori.providers import cpu, models

    fused = "--fused" in argv
    asks = dict(a.split("=", 1) for a in argv if "=" in a)
    result: dict[str, Any] = {"cpu": sorted(cpu.detect().flags), "seconds": {}}
    if "smart-turn" in asks:
        from moksori.providers.turn_smart import SmartTurn

        t0 = time.perf_counter()
        turn = SmartTurn()
        if fused:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            turn.session = ort.InferenceSession(str(models.path_of("smart-turn-v3.2")), so,
                                                providers=["CPUExecutionProvider"])
        out = {}
        for item in asks["smart-turn"].split(","):
            name, kind = item.split("/")
            audio = clip(name)
            out[item] = float(turn._predict(audio[: int(CUT * len(audio))] if kind == "cut" else audio))
        result["smart-turn"] = out
        result["seconds"]["smart-turn"] = time.perf_counter() - t0
    if "silero" in asks:
        from moksori.providers.vad_silero import SileroVAD

        t0 = time.perf_counter()
        result["silero"] = silero_outputs(SileroVAD(), asks["silero"].split(","))
        result["seconds"]["silero"] = time.perf_counter() - t0
    if "piper" in asks:
        from moksori.providers.tts_piper import PiperTTS

        t0 = time.perf_counter()
        result["piper"] = piper_outputs(PiperTTS(stream=False)._voice, asks["piper"].split("|"))
        result["seconds"]["piper"] = time.perf_counter() - t0
    if "whisper" in asks:  # the configured Whisper (MOKSORI_STT_COMPUTE_TYPE, MOKSORI_DATA_DIR)
        from moksori.providers.registry import build_stt
        from moksori.settings import load_settings

        t0 = time.perf_counter()
        result["whisper"] = whisper_outputs(build_stt(load_settings()), asks["whisper"].split(","))
        result["seconds"]["whisper"] = time.perf_counter() - t0
    sys.stdout.write(json.dumps(result) + "\n")


def child_smart_turn_as_pairs(out: dict[str, float]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """A child's {"CLIP/cut": p} -> ({CLIP: [whole, cut]} of what was asked, reference of the same)."""
    ref = load_reference("smart-turn")["outputs"]
    got, want = {}, {}
    for item, p in out.items():
        name, kind = item.split("/")
        i = 1 if kind == "cut" else 0
        got.setdefault(name, [None, None])[i] = p
        want.setdefault(name, [None, None])[i] = ref[name][i]
    return got, want


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "child":
        raise SystemExit(_child.__doc__)
    _child(sys.argv[2:])
