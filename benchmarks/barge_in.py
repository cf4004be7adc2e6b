"""Barge-in reaction: onset of the user's speech over a reply -> reply audio cleared.

A real utterance gets a reply from the embedded stack; while the reply plays, a second real
utterance starts. Reaction = `agent.interrupted` time - true speech onset, where the true onset
is the splice time plus the clip's leading silence (from ../shared/speech/MANIFEST.tsv). Runs in
real time. The engine's own estimate (`reaction_ms`, from the VAD's first voiced frame) is
printed beside it.

    python benchmarks/barge_in.py [--reps 2]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import statistics
import sys
from pathlib import Path

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"
INTERRUPTERS = ["en/en_002.wav", "en/en_005.wav", "en/en_007.wav", "en/en_028.wav", "tel/tel_005.wav"]


def lead_silence(name: str) -> float:
    with open(SPEECH / "MANIFEST.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["file"] == name:
                m = re.search(r"Lead/trail silence ([\d.]+)/([\d.]+) s", row["notes"])
                return float(m.group(1)) if m else 0.0
    raise KeyError(name)


async def one(stack, settings, interrupter: str, wait_s: float) -> dict:
    from moksori.audio.frames import Frame
    from moksori.audio.wav import load_audio
    from moksori.engine.config import config_from_settings
    from moksori.engine.session import Session
    from moksori.testing.harness import Recording, play_into_session, settle

    session = Session(stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0))
    rec = Recording(24000)
    session.bus.listen(rec)
    await play_into_session(session, [Frame.silence(0.5, 16000), load_audio(SPEECH / "en/en_028.wav", rate=16000)],
                            recording=rec)
    # wait until the reply has been playing for `wait_s`
    for _ in range(400):
        if rec.of("agent.audio_started"):
            break
        await play_into_session(session, Frame.silence(0.02, 16000), recording=rec)
    await play_into_session(session, Frame.silence(wait_s, 16000), recording=rec)
    splice_t = session.clock.now()
    onset = splice_t + lead_silence(interrupter)
    await play_into_session(session, [load_audio(SPEECH / interrupter, rate=16000), Frame.silence(2.0, 16000)],
                            recording=rec)
    await settle(session, 10)
    await session.close()
    hits = [e for e in rec.of("agent.interrupted") if e.t >= splice_t]
    if not hits:
        return {"file": interrupter, "interrupted": False}
    ev = hits[0]
    return {"file": interrupter, "interrupted": True, "reaction_ms": round(1000 * (ev.t - onset)),
            "engine_reaction_ms": ev.reaction_ms, "heard_ms": ev.heard_ms}


async def run(reps: int) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    # long replies, so that there is a reply to talk over; the barge-in rule is the configured one
    settings = load_settings(llm={"max_tokens": 200},
                             agent={"instructions": "Answer with a long, detailed paragraph of at least five sentences."})
    stack = build_stack(settings)
    await stack.warm(system_prompt(None, stack.llm.caps.languages))
    rows = []
    for _ in range(reps):
        for f in INTERRUPTERS:
            row = await one(stack, settings, f, 1.0)
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    lat = sorted(r["reaction_ms"] for r in rows if r.get("interrupted"))
    q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]  # noqa: E731
    return {"what": "barge-in: true speech onset -> agent.interrupted (reply audio cleared), real time",
            "samples": len(lat), "missed": sum(1 for r in rows if not r.get("interrupted")),
            "p50_ms": q(0.5), "p95_ms": q(0.95), "mean_ms": round(statistics.mean(lat)),
            "interrupt_min_speech_ms": settings.turn.interrupt_min_speech_ms, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args.reps))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
