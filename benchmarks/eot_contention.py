"""What the end-of-turn model and the VAD cost the models they share the cores with.

A pause's speculation decodes the turn (Whisper), starts the reply (the LLM evaluates the user's
message) and runs smart-turn; Silero VAD runs on every 32 ms input frame throughout. This times,
outside the engine and interleaved (the order rotating each round), on the embedded stack:

* `stt` / `stt+eot`: Whisper's decode of the turn, alone / with smart-turn started beside it;
* `llm` / `llm+eot`: the LLM's first token (the user's message evaluated after the system prompt,
  which is in llama.cpp's cache as after start-up), alone / with smart-turn started beside it;
* `llm+vad`: the same with Silero VAD fed a frame every 32 ms (real-time pace) meanwhile;
* `eot` / `eot@2`: smart-turn alone with 1 intra-op thread (the stack's) / with 2;
* `eot|llm`: smart-turn's own time when started beside the LLM (`llm+eot`), `eot|stt` beside Whisper.

Utterances: LibriVox en_001..005 (../shared/speech). Also prints Silero's time per frame.

    python benchmarks/eot_contention.py [--rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _stats import cold_llm, pct

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent.parent / "shared" / "speech"
UTTERANCES = [f"en/en_00{i}.wav" for i in range(1, 6)]


async def run(args) -> dict:
    from moksori.audio.wav import load_audio
    from moksori.engine.prompts import system_prompt
    from moksori.providers.base import ChatRequest, Message, STTOptions, TextDelta, one_chunk
    from moksori.providers.registry import build_stack
    from moksori.providers.turn_smart import SmartTurn
    from moksori.settings import load_settings

    settings = load_settings()
    stack = build_stack(settings)
    system = system_prompt(settings.agent.instructions, stack.llm.caps.languages)
    await stack.warm(system)
    assert stack.turn is not None
    turn1 = stack.turn
    turn2 = SmartTurn(threads=2)
    vad = stack.vad
    audios = [load_audio(SPEECH / u, rate=16000).to_float() for u in UTTERANCES]
    # the pause's audio as the speculation takes it: the speech plus ~64 ms of silence
    audios = [np.concatenate([a, np.zeros(1024, np.float32)]) for a in audios]

    async def stt(audio: np.ndarray) -> str:
        text = ""
        async for tr in stack.stt.transcribe(one_chunk(audio), STTOptions(language="en", languages=("en",))):
            if tr.final:
                text = tr.text
        return text

    texts = [await stt(a) for a in audios]

    async def first_token(text: str) -> float:
        await cold_llm(stack.llm, system)  # the KV cache holds the system prompt only
        req = ChatRequest(messages=(Message("system", system), Message("user", text)), temperature=0.0,
                          max_tokens=1)
        t0 = time.perf_counter()
        got = None
        async for ev in stack.llm.chat(req):
            if isinstance(ev, TextDelta) and got is None:
                got = time.perf_counter() - t0
        return got if got is not None else time.perf_counter() - t0

    async def timed(coro) -> float:
        t0 = time.perf_counter()
        await coro
        return time.perf_counter() - t0

    def vad_pacer(stop: threading.Event, frames: list[float]) -> None:
        s = vad.stream()
        frame = np.zeros(512, np.float32) + 1e-3 * np.random.default_rng(0).standard_normal(512).astype(np.float32)
        nxt = time.perf_counter()
        while not stop.is_set():
            t0 = time.perf_counter()
            s(frame)
            frames.append(time.perf_counter() - t0)
            nxt += 0.032
            time.sleep(max(0.0, nxt - time.perf_counter()))

    vad_frames: list[float] = []

    async def condition(name: str, i: int) -> dict[str, float]:
        audio, text = audios[i], texts[i]
        if name == "stt":
            return {"stt": await timed(stt(audio))}
        if name == "stt+eot":
            e = asyncio.ensure_future(timed(turn1.complete_probability(audio)))
            s = await timed(stt(audio))
            return {"stt+eot": s, "eot|stt": await e}
        if name == "llm":
            return {"llm": await first_token(text)}
        if name == "llm+eot":
            await cold_llm(stack.llm, system)
            e = asyncio.ensure_future(timed(turn1.complete_probability(audio)))
            s = await first_token(text)
            return {"llm+eot": s, "eot|llm": await e}
        if name == "llm+vad":
            await cold_llm(stack.llm, system)
            stop = threading.Event()
            th = threading.Thread(target=vad_pacer, args=(stop, vad_frames), daemon=True)
            th.start()
            try:
                s = await first_token(text)
            finally:
                stop.set()
                th.join()
            return {"llm+vad": s}
        if name == "eot":
            return {"eot": await timed(turn1.complete_probability(audio))}
        if name == "eot@2":
            return {"eot@2": await timed(turn2.complete_probability(audio))}
        raise ValueError(name)

    names = ["stt", "stt+eot", "llm", "llm+eot", "llm+vad", "eot", "eot@2"]
    samples: dict[str, list[float]] = {}
    pairs: dict[str, list[float]] = {"llm+eot - llm": [], "llm+vad - llm": [], "stt+eot - stt": []}
    # probabilities must not depend on threads: compare 1 and 2 intra-op threads on the same audio
    probs = [(await turn1.complete_probability(a), await turn2.complete_probability(a)) for a in audios]
    load_before = os.getloadavg()
    n = 0
    for r in range(args.rounds):
        for i in range(len(audios)):
            order = names[n % len(names):] + names[:n % len(names)]
            n += 1
            got: dict[str, float] = {}
            for name in order:
                got.update(await condition(name, i))
            for k, v in got.items():
                samples.setdefault(k, []).append(v)
            for key in pairs:
                a, b = key.split(" - ")
                pairs[key].append(got[a] - got[b])
            print(json.dumps({"round": r, "file": UTTERANCES[i], **{k: round(1000 * v, 1) for k, v in got.items()}}),
                  file=sys.stderr)

    def ms(xs: list[float], q: float) -> float:
        return round(1000 * pct(xs, q), 1)

    return {
        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()], "rounds": args.rounds,
        "texts": texts,
        "p50_ms": {k: ms(v, 0.5) for k, v in samples.items()},
        "p95_ms": {k: ms(v, 0.95) for k, v in samples.items()},
        "paired_median_ms": {k: ms(v, 0.5) for k, v in pairs.items()},
        "vad_frame_ms": {"p50": ms(vad_frames, 0.5), "p95": ms(vad_frames, 0.95), "frames": len(vad_frames),
                         "share_of_one_core_at_32ms": round(pct(vad_frames, 0.5) / 0.032, 4) if vad_frames else None},
        "eot_probability_1_vs_2_threads": [(round(a, 4), round(b, 4)) for a, b in probs],
        "eot_probability_max_abs_diff": max(abs(a - b) for a, b in probs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps({k: v for k, v in out.items() if k != "texts"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
