"""Piper one-shot vs streamed in windows (`providers/piper_stream.py`), interleaved in one run.

For each first clause (English: ones SmolLM2 spoke in the `first_clause.py` runs, and longer
ones up to the 50-character cap; Korean: first clauses read by the packaged voice through
espeak-ng's Korean phonemes, standing in for a user's Korean Piper voice), each rep runs both
providers, in alternating order, through `PiperTTS.synthesize` as the engine calls it:

  first_audio  text in -> the first frame out (ms), p50/p95
  rtf          whole synthesis time / audio length
  stall        streamed only: how late a later frame came against real-time playback started
               at the first frame (ms; >0 would be a gap in the reply)
  level        the streamed clause's active loudness minus the one-shot's (dB; Piper's one-shot
               output is scaled to full-scale peak per sentence, the streamed one by a gain fixed
               before the sentence exists, `Leveller`), and how many clauses touched the soft limit

Also the load time of each provider and the machine's load average (other work shares the cores).

    python benchmarks/piper_stream.py [--reps 5] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _stats import pct

EN = ["I'm sorry,", "10 of clubs.", "The person's eyes lit up", "I'm sorry for any misunderstanding,",
      "Sure, I can help you with that.", "The weather in Seoul is sunny today,",
      "Your appointment is booked for three o'clock tomorrow.", "That's a great question,"]
KO = ["네, 알겠습니다.", "안녕하세요, 무엇을 도와드릴까요?", "죄송하지만 그 정보는 찾을 수 없었어요.",
      "내일 오후 세 시에 예약해 드렸습니다.", "오늘 서울은 맑고 최고 기온은 이십삼 도예요,",
      "그는 이리저리 피하면서 길 한 옆으로 걸어갔다."]


def korean_voice(tmp: Path) -> Path:
    """The packaged voice with espeak-ng's Korean phonemizer (a copy of its config)."""
    from moksori.providers.models import path_of

    src = path_of("piper-en-joe")
    dst = tmp / "ko_stand-in.onnx"
    os.symlink(src, dst)
    cfg = json.loads(Path(str(src) + ".json").read_text(encoding="utf-8"))
    cfg["espeak"]["voice"] = "ko"
    Path(str(dst) + ".json").write_text(json.dumps(cfg), encoding="utf-8")
    return dst


def active_db(x: np.ndarray, rate: int) -> float:
    """Loudness over the 10 ms windows above -40 dBFS."""
    win = rate // 100
    n = len(x) // win
    r = np.sqrt(np.mean((x[:n * win].astype(np.float64) / 32768.0).reshape(n, win) ** 2, axis=1))
    r = r[r > 0.01]
    return float(20 * np.log10(np.sqrt(np.mean(r ** 2)))) if len(r) else float("nan")


async def once(tts, text: str, language: str) -> dict:
    from moksori.providers.base import TTSOptions

    t0 = time.perf_counter()
    arrivals: list[tuple[float, int]] = []
    pieces = []
    async for f in tts.synthesize(text, TTSOptions(language=language)):
        arrivals.append((time.perf_counter() - t0, len(f)))
        pieces.append(f.samples)
    total = time.perf_counter() - t0
    rate = tts.caps.sample_rate
    audio = np.concatenate(pieces)
    played, stall = 0, 0.0
    for at, n in arrivals:
        stall = max(stall, at - (arrivals[0][0] + played / rate))
        played += n
    return {"first_audio_ms": 1000 * arrivals[0][0], "total_ms": 1000 * total, "audio_s": len(audio) / rate,
            "rtf": total / (len(audio) / rate), "frames": len(arrivals), "stall_ms": 1000 * stall,
            "level_db": active_db(audio, rate), "peak": float(np.max(np.abs(audio))) / 32768.0}


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for lang in ("en", "ko"):
        for mode in ("one_shot", "stream"):
            rs = [r for r in rows if r["language"] == lang and r["mode"] == mode]
            fa = [r["first_audio_ms"] for r in rs]
            out[f"{lang}_{mode}"] = {
                "n": len(rs), "first_audio_p50_ms": round(pct(fa, 0.5)), "first_audio_p95_ms": round(pct(fa, 0.95)),
                "rtf_p50": round(pct([r["rtf"] for r in rs], 0.5), 3),
                "stall_max_ms": round(max((r["stall_ms"] for r in rs), default=0)),
                "frames_p50": pct([r["frames"] for r in rs], 0.5)}
        pairs = {}
        for r in rows:
            if r["language"] == lang:
                pairs.setdefault((r["text"], r["rep"]), {})[r["mode"]] = r
        d = [p["stream"]["level_db"] - p["one_shot"]["level_db"] for p in pairs.values() if len(p) == 2]
        limited = sum(1 for p in pairs.values() if "stream" in p and p["stream"]["peak"] > 0.9)
        out[f"{lang}_level_vs_one_shot_db"] = {"p5": round(pct(d, 0.05), 1), "p50": round(pct(d, 0.5), 1),
                                               "p95": round(pct(d, 0.95), 1), "limited": f"{limited}/{len(pairs)}"}
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from moksori.providers.tts_piper import PiperTTS

    tmp = Path(tempfile.mkdtemp(prefix="piper-stream-bench-"))
    try:
        ko_path = korean_voice(tmp)
        load: dict[str, float] = {}
        voices = {}
        for mode, stream in (("one_shot", False), ("stream", True)):
            for lang, path in (("en", None), ("ko", ko_path)):
                t = time.perf_counter()
                voices[(lang, mode)] = PiperTTS(path, threads=args.threads, language=lang, stream=stream)
                load[f"{lang}_{mode}"] = round(time.perf_counter() - t, 2)
        for v in voices.values():  # first-inference costs out of the way
            await once(v, "Hi." if "en" in v.caps.languages else "네.", v.caps.languages[0])
        rows = []
        load_before = os.getloadavg()
        for rep in range(args.reps):
            for i, (lang, text) in enumerate([("en", t) for t in EN] + [("ko", t) for t in KO]):
                order = ("one_shot", "stream") if (rep + i) % 2 == 0 else ("stream", "one_shot")
                for mode in order:
                    r = await once(voices[(lang, mode)], text, lang)
                    rows.append({"language": lang, "mode": mode, "text": text, "rep": rep, **r})
                    print(f"{lang} {mode:8s} first {r['first_audio_ms']:6.0f} ms  rtf {r['rtf']:.3f}  "
                          f"{r['frames']} frames  stall {r['stall_ms']:4.0f} ms  {text}", flush=True)
        result = {"summary": summary(rows), "load_s": load,
                  "loadavg": {"before": load_before, "after": os.getloadavg()}, "cpu": cpu_name(), "rows": rows}
        print(json.dumps({k: result[k] for k in ("summary", "load_s", "loadavg", "cpu")}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    asyncio.run(main())
