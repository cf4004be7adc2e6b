"""What each embedded model costs on this machine: a table of figures (not a test).

* STT: Whisper base real-time factor (and WER) per file and overall, on the LibriVox utterances
  (shared/speech en_001..005) and the 8 kHz telephone files (tel/8k/tel_001..016), through
  Moksori's short-window `WhisperSTT`, and for comparison through faster-whisper's own
  `WhisperModel.transcribe` (30 s window, beam_size=1) with the same weights.
* LLM: the packaged SmolLM2, time to first token and generation tokens/s, with a cold prompt
  (nothing cached) and with the system prompt already in the KV cache.
* TTS: time to first audio and real-time factor, Piper (en) and espeak-ng (ko), 3 sentences each.
* VAD: Silero cost per 32 ms frame; smart-turn: cost per call on 8 s of audio, on Moksori's
  graph level (BASIC: the float path, same on every CPU) and on the fused int8 path it used before.
* Whisper compute type: int8 (default) against float32 (the same transcript on every CPU).
* Memory: peak RSS of the whole embedded stack (build_stack + warm + one STT+LLM+TTS pass),
  measured with getrusage in a fresh subprocess started before this process loads any model
  (a child's ru_maxrss starts at its parent's RSS), cross-checked with /proc VmHWM.

    python benchmarks/models.py [--json out.json] [--quick]

Uses MOKSORI_DATA_DIR if set, otherwise a temporary data dir (Whisper is joined there, ~1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths and WER

SYSTEM = ("You are a friendly voice assistant on a phone line. Answer in one or two short sentences, "
          "in plain words, without lists or markdown.")
QUESTIONS = ["What is the capital of France?", "Give me one tip for sleeping better.",
             "What should I cook for dinner tonight?", "How far away is the moon?"]
EN_SENTENCES = ["The weather is lovely today, so we are going for a walk in the park.",
                "Please call me back tomorrow morning before the meeting starts.",
                "My brother bought a small red car last summer."]
KO_SENTENCES = ["저는 서울에 살고 있습니다.", "감사합니다. 좋은 하루 되세요.", "내일 아침에 다시 전화해 주세요."]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- STT


def bench_stt(settings, quick: bool) -> dict:
    from speech import load16k, utt, word_errors

    from moksori.providers.base import STTOptions
    from moksori.providers.registry import build_stt

    stt = build_stt(settings)
    stt.transcribe_array(load16k(utt("en_002").path), STTOptions(language="en"))  # warm
    files = [(f"en/{n}", utt(n).path, utt(n).transcript) for n in (f"en_{i:03d}" for i in range(1, 6))]
    tel = range(1, 6) if quick else range(1, 17)
    files += [(f"tel/8k/{u.name}", u.path_8k, u.transcript) for u in (utt(f"tel_{i:03d}") for i in tel)]
    rows, out = [], []
    totals = {"audio": 0.0, "short": 0.0, "full": 0.0, "err_s": 0, "err_f": 0, "words": 0}
    for label, path, ref in files:
        audio = load16k(path)
        dur = len(audio) / 16000
        t0 = time.perf_counter()
        hyp = stt.transcribe_array(audio, STTOptions(language="en")).text
        short = time.perf_counter() - t0
        t0 = time.perf_counter()
        segments, _ = stt._wm.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
        hyp_full = " ".join(s.text.strip() for s in segments)
        full = time.perf_counter() - t0
        e_s, n = word_errors(ref, hyp)
        e_f, _ = word_errors(ref, hyp_full)
        totals["audio"] += dur
        totals["short"] += short
        totals["full"] += full
        totals["err_s"] += e_s
        totals["err_f"] += e_f
        totals["words"] += n
        rows.append([label, round(dur, 2), short / dur, full / dur, f"{e_s}/{n}", f"{e_f}/{n}"])
        out.append({"file": label, "audio_s": dur, "rtf_moksori": short / dur, "rtf_30s_window": full / dur,
                    "errors_moksori": e_s, "errors_30s_window": e_f, "words": n, "text": hyp, "text_30s": hyp_full})
    agg = {"audio_s": totals["audio"], "rtf_moksori": totals["short"] / totals["audio"],
           "rtf_30s_window": totals["full"] / totals["audio"],
           "wer_moksori": totals["err_s"] / totals["words"], "wer_30s_window": totals["err_f"] / totals["words"]}
    rows.append(["ALL", round(totals["audio"], 2), agg["rtf_moksori"], agg["rtf_30s_window"],
                 f"{agg['wer_moksori']:.1%}", f"{agg['wer_30s_window']:.1%}"])
    table(f"STT: Whisper base {settings.stt.compute_type}, beam 1, 2 threads (RTF = processing time / audio time)",
          ["file", "audio s", "RTF moksori", "RTF 30s-window", "errors moksori", "errors 30s"], rows)
    return {"files": out, "aggregate": agg}


# --------------------------------------------------------------------------- LLM


async def _chat(llm, system: str, user: str, max_tokens: int = 48) -> dict:
    from moksori.providers.base import ChatRequest, Message, TextDelta, Usage

    req = ChatRequest(messages=(Message("system", system), Message("user", user)), max_tokens=max_tokens,
                      temperature=0.2)
    t0 = time.perf_counter()
    first = last = None
    usage = None
    async for ev in llm.chat(req):
        now = time.perf_counter() - t0
        if isinstance(ev, TextDelta):
            first = now if first is None else first
            last = now
        elif isinstance(ev, Usage):
            usage = ev
    gen_tokens = max(0, (usage.output_tokens if usage else 0) - 1)
    tps = gen_tokens / (last - first) if first is not None and last and last > first else float("nan")
    return {"ttft_s": first, "tokens_per_s": tps, "input_tokens": usage.input_tokens if usage else 0,
            "cached_tokens": usage.cached_tokens if usage else 0, "output_tokens": usage.output_tokens if usage else 0}


def bench_llm(settings, quick: bool) -> dict:
    from moksori.providers.registry import build_llm

    llm = build_llm(settings)
    n = 2 if quick else len(QUESTIONS)

    async def run() -> dict:
        await _chat(llm, "Warm-up.", "Hi", max_tokens=2)
        cold, cached = [], []
        for i in range(n):
            # a new first line: nothing of this prompt is in the KV cache
            cold.append(await _chat(llm, f"Conversation {i * 7919 + 13}. {SYSTEM}", QUESTIONS[i]))
        await _chat(llm, SYSTEM, "Hello.", max_tokens=2)  # put the system prompt in the cache
        for i in range(n):
            cached.append(await _chat(llm, SYSTEM, QUESTIONS[i]))
        return {"cold": cold, "cached": cached}

    res = asyncio.run(run())
    rows = []
    summary = {}
    for kind in ("cold", "cached"):
        xs = res[kind]
        s = {"ttft_ms": 1000 * median([x["ttft_s"] for x in xs if x["ttft_s"] is not None]),
             "tokens_per_s": median([x["tokens_per_s"] for x in xs]),
             "input_tokens": median([x["input_tokens"] for x in xs]),
             "cached_tokens": median([x["cached_tokens"] for x in xs])}
        summary[kind] = s
        rows.append([kind, s["input_tokens"], s["cached_tokens"], round(s["ttft_ms"], 1), round(s["tokens_per_s"], 1)])
    table(f"LLM: {llm.name} (median of {n} calls, 2 threads)",
          ["prompt", "input tok", "cached tok", "first token ms", "gen tok/s"], rows)
    return {"calls": res, "summary": summary}


# --------------------------------------------------------------------------- TTS


def bench_tts(settings) -> dict:
    from moksori.providers.base import TTSOptions
    from moksori.providers.registry import build_tts

    tts = build_tts(settings)

    async def one(text: str, lang: str) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        first = None
        samples = 0
        rate = 22050
        async for f in tts.synthesize(text, TTSOptions(language=lang)):
            first = time.perf_counter() - t0 if first is None else first
            samples += len(f)
            rate = f.rate
        total = time.perf_counter() - t0
        return first or total, total, samples / rate

    async def run() -> dict:
        await one("Hi.", "en")
        await one("네.", "ko")
        out = {}
        for lang, voice, sentences in (("en", "piper", EN_SENTENCES), ("ko", "espeak-ng", KO_SENTENCES)):
            out[voice] = [dict(zip(("first_audio_s", "total_s", "audio_s"), await one(s, lang))) for s in sentences]
        return out

    res = asyncio.run(run())
    rows, summary = [], {}
    for voice, xs in res.items():
        s = {"first_audio_ms": 1000 * median([x["first_audio_s"] for x in xs]),
             "rtf": sum(x["total_s"] for x in xs) / sum(x["audio_s"] for x in xs),
             "audio_s": sum(x["audio_s"] for x in xs)}
        summary[voice] = s
        rows.append([voice, round(s["audio_s"], 2), round(s["first_audio_ms"], 1), s["rtf"]])
    table("TTS (3 sentences each)", ["voice", "audio s", "first audio ms (median)", "RTF"], rows)
    return {"calls": res, "summary": summary}


# --------------------------------------------------------------------------- VAD and smart-turn


def bench_vad_turn(settings) -> dict:
    import numpy as np
    from speech import load16k, utt

    from moksori.providers.registry import build_turn, build_vad

    vad = build_vad(settings)
    audio = np.concatenate([load16k(utt(n).path) for n in ("en_001", "en_011", "tel_015")])
    frames = [audio[i:i + 512] for i in range(0, len(audio) - 512, 512)]
    stream = vad.stream()
    for f in frames[:50]:
        stream(f)
    stream.reset()
    t0 = time.perf_counter()
    for f in frames:
        stream(f)
    vad_ms = 1000 * (time.perf_counter() - t0) / len(frames)

    turn = build_turn(settings)
    fused = build_turn(settings)  # the setting before issue 8, for the cost of the fix in the same run
    fused.session = _fused_session(fused.path)
    clip = audio[-8 * 16000:]
    turn._predict(clip)
    fused._predict(clip)
    feats, calls, fused_calls = [], [], []
    for _ in range(15):  # interleaved, so load changes hit both alike
        t0 = time.perf_counter()
        turn.features(clip)
        feats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        turn._predict(clip)
        calls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fused._predict(clip)
        fused_calls.append(time.perf_counter() - t0)
    res = {"vad_ms_per_frame": vad_ms, "vad_frames": len(frames), "vad_share_of_realtime": vad_ms / 32.0,
           "turn_ms_per_call": 1000 * median(calls), "turn_features_ms": 1000 * median(feats),
           "turn_fused_int8_ms_per_call": 1000 * median(fused_calls)}
    table("VAD and end of turn", ["model", "cost", "note"], [
        ["Silero VAD", f"{vad_ms:.3f} ms/frame", f"{len(frames)} frames of 32 ms, {100 * vad_ms / 32:.2f}% of real time"],
        ["smart-turn v3.2", f"{res['turn_ms_per_call']:.1f} ms/call", f"8 s of audio; log-mel {res['turn_features_ms']:.1f} ms of it; "
         "graph BASIC (the float QDQ path, same on every CPU)"],
        ["  same, fused int8", f"{res['turn_fused_int8_ms_per_call']:.1f} ms/call",
         "ORT_ENABLE_ALL, before issue 8: results depend on the CPU (saturates on AVX2 without VNNI)"],
    ])
    return res


def _fused_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- Whisper compute type


_CT_CLIPS = ["en_001", "en_002", "en_003", "en_004", "en_005", "tel_001", "tel_003", "tel_006", "tel_011", "tel_015"]


def compute_type_child(compute_type: str, data_dir: str, quick: bool) -> None:
    """In a fresh process (CTranslate2 picks its GEMM library once per process, as a server does):
    Whisper at one compute type on the same clips; print the time per pass."""
    from speech import load16k, utt

    from moksori.providers.base import STTOptions
    from moksori.providers.registry import build_stt
    from moksori.settings import load_settings

    os.environ["MOKSORI_STT_COMPUTE_TYPE"] = compute_type
    stt = build_stt(load_settings(data_dir=data_dir))
    names = _CT_CLIPS[:5] if quick else _CT_CLIPS
    clips = [load16k(utt(n).path) for n in names]
    stt.transcribe_array(clips[1], STTOptions(language="en"))  # warm
    passes, calls = [], []
    for _ in range(2 if quick else 3):
        t0 = time.perf_counter()
        for c in clips:
            t1 = time.perf_counter()
            stt.transcribe_array(c, STTOptions(language="en"))
            calls.append(time.perf_counter() - t1)
        passes.append(time.perf_counter() - t0)
    print(json.dumps({"audio_s": sum(len(c) for c in clips) / 16000, "passes_s": passes, "calls_s": calls}))


def bench_compute_type(data_dir: str, quick: bool) -> dict:
    """Whisper int8 (the default: faster, but CTranslate2's int8 kernels round differently per
    instruction set) against float32 (the same transcript on every CPU), each in its own process,
    alternating so that load changes hit both alike."""
    runs: dict[str, list[dict]] = {"int8": [], "float32": []}
    for _ in range(2):
        for ct in runs:
            args = [sys.executable, __file__, "--compute-type-child", ct, data_dir] + (["--quick"] if quick else [])
            proc = subprocess.run(args, capture_output=True, text=True, timeout=900,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode != 0:
                raise SystemExit(f"compute-type child failed:\n{proc.stderr[-2000:]}")
            runs[ct].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    res: dict = {}
    for ct, xs in runs.items():
        audio_s = xs[0]["audio_s"]
        res[ct] = {"rtf": median([p for x in xs for p in x["passes_s"]]) / audio_s,
                   "ms_per_call": 1000 * median([c for x in xs for c in x["calls_s"]])}
    res["audio_s"] = runs["int8"][0]["audio_s"]
    res["float32_over_int8"] = res["float32"]["rtf"] / res["int8"]["rtf"]
    table(f"Whisper base compute type ({res['audio_s']:.1f} s of audio, median of passes, 2 processes each)",
          ["compute type", "RTF", "median ms per clip", "note"], [
              ["int8 (default)", res["int8"]["rtf"], round(res["int8"]["ms_per_call"], 1),
               "rounding differs per instruction set"],
              ["float32", res["float32"]["rtf"], round(res["float32"]["ms_per_call"], 1), "same tokens on every CPU"],
          ])
    return res


# --------------------------------------------------------------------------- memory


def rss_child(data_dir: str) -> None:
    """In a fresh process: the whole stack, warmed, then one STT+LLM+TTS pass; print peak RSS."""
    import resource

    from speech import load16k, utt

    from moksori.engine.prompts import system_prompt
    from moksori.providers.base import ChatRequest, Message, STTOptions, TTSOptions, one_chunk
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux

    def hwm_mib() -> float | None:  # this process image's own high-water mark (reset at exec)
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    base = peak_mib()
    settings = load_settings(data_dir=data_dir)
    stack = build_stack(settings)
    loaded = peak_mib()
    prompt = system_prompt(settings.agent.instructions, stack.llm.caps.languages)

    async def run() -> None:
        await stack.warm(prompt)
        text = ""
        async for tr in stack.stt.transcribe(one_chunk(load16k(utt("en_001").path)), STTOptions(language="en")):
            text = tr.text
        reply = ""
        async for ev in stack.llm.chat(ChatRequest(messages=(Message("system", prompt), Message("user", text)),
                                                   max_tokens=60)):
            reply += getattr(ev, "text", "")
        async for _ in stack.tts.synthesize(reply or "Okay.", TTSOptions(language="en")):
            pass
        async for _ in stack.tts.synthesize("알겠습니다.", TTSOptions(language="ko")):
            pass
        await stack.close()

    asyncio.run(run())
    print(json.dumps({"python_mib": base, "after_load_mib": loaded, "peak_mib": peak_mib(), "vm_hwm_mib": hwm_mib()}))


def bench_rss(data_dir: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--rss-child", data_dir], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    table("Memory: peak RSS of the embedded stack (fresh process)", ["stage", "MiB"], [
        ["python + imports", round(res["python_mib"], 1)],
        ["after build_stack", round(res["after_load_mib"], 1)],
        ["peak (warm + STT + LLM + TTS)", round(res["peak_mib"], 1)],
        ["cross-check: VmHWM", round(res["vm_hwm_mib"], 1) if res.get("vm_hwm_mib") else "-"],
    ])
    return res


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--quick", action="store_true", help="fewer files and calls (a smoke run)")
    ap.add_argument("--rss-child", metavar="DATA_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--compute-type-child", nargs=2, metavar=("TYPE", "DATA_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.compute_type_child:
        compute_type_child(*args.compute_type_child, args.quick)
        return

    from speech import speech_available

    from moksori.providers.models import prepare_whisper
    from moksori.settings import load_settings

    if not speech_available():
        raise SystemExit("no speech corpus: expected ../shared/speech/MANIFEST.tsv next to the repo")
    tmp = None
    data_dir = os.environ.get("MOKSORI_DATA_DIR")
    if not data_dir:
        tmp = tempfile.TemporaryDirectory(prefix="moksori-bench-")
        data_dir = tmp.name
    prepare_whisper(Path(data_dir))
    settings = load_settings(data_dir=data_dir)
    started = time.perf_counter()
    from moksori.providers.cpu import detect

    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "cpu": detect().summary(),
                          "load_avg_at_start": os.getloadavg()}}
    try:
        # First, while this process is still small: on Linux a child's ru_maxrss starts from the
        # parent's RSS at fork, so measuring after loading models here would inflate the figure.
        result["memory"] = bench_rss(data_dir)
        result["stt"] = bench_stt(settings, args.quick)
        result["llm"] = bench_llm(settings, args.quick)
        result["tts"] = bench_tts(settings)
        result["vad_turn"] = bench_vad_turn(settings)
        result["stt_compute_type"] = bench_compute_type(data_dir, args.quick)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    result["elapsed_s"] = time.perf_counter() - started
    print(f"\n{os.cpu_count()} CPUs, load average {result['machine']['load_avg_at_start'][0]:.2f} at start, "
          f"{result['machine']['load_avg_at_end'][0]:.2f} at end; {result['elapsed_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
