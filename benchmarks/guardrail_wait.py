"""The realtime brain's input guardrail wait: how long a user turn is held before the upstream
is asked for a reply, while the input guardrail checks its words.

With Moksori's own turn-taking (`MOKSORI_REALTIME_TURN_DETECTION=moksori`) the brain commits the
turn upstream at once, then holds `response.create` until the local STT's words are known (at
most 1.5 s, `brains/realtime/guarding.LOCAL_WORDS_WAIT_S`) and the input check has passed them.
Three fronts (`moksori serve`, realtime brain) in front of one upstream, interleaved per
utterance in one run:

* `off`        — no guardrails (the baseline: nothing is held);
* `terms`      — the term-list policy (`MOKSORI_GUARDRAILS_BLOCK_TERMS_EN`);
* `moderation` — an OpenAI-compatible `/v1/moderations` endpoint on loopback
  (`ScriptedModeration` below: a scripted stand-in that answers "not flagged" at once, so the
  figure is Moksori's own cost plus one loopback HTTP round trip, not a real model's).

The upstream is the scripted Realtime server `moksori.testing.fake_realtime` (served here, in
this process; input transcription off, and its scripted transcripts dropped, so the words checked
are the local STT's). Its clock is the
benchmark's, so for each turn it gives, on one clock:

* `hold_ms`: the commit arriving upstream -> `response.create` arriving upstream (the wait);
  for `moderation` split into `request_ms` (commit -> the words reaching the stand-in: waiting
  for the local STT) and `check_ms` (from there to `response.create`: the check itself);
* `eos_ms`:  end of speech (from the file's trailing silence) -> `response.create` upstream;
* `added_ms`: a guarded front's `eos_ms` minus the `off` front's, same utterance and rep.

Speech: ../shared/speech/en/en_001..005 at 24 kHz, streamed at real-time pace.

    python benchmarks/guardrail_wait.py [--reps 3] [--json benchmarks/results/guardrail_wait.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import threading
import time
from pathlib import Path

from _stats import pct
from realtime_brain import _audio, _feed, start
from server_latency import NAMES, _free_port, manifest

FRONTS = ("off", "terms", "moderation")
SESSION = {"type": "realtime", "output_modalities": ["audio"],
           "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}


class ScriptedModeration:
    """A scripted stand-in for an OpenAI-compatible `/v1/moderations` server on loopback: every
    text is "not flagged", answered at once. Counts its requests."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.requests = 0
        self.texts: list[str] = []  # what was sent, for the record
        self.arrivals: list[float] = []  # when each request came (time.monotonic: the benchmark's clock)
        self.app = Starlette(routes=[Route("/v1/moderations", self.moderate, methods=["POST"])])

    async def moderate(self, request):  # type: ignore[no-untyped-def]
        from starlette.responses import JSONResponse

        self.arrivals.append(time.monotonic())
        body = await request.json()
        self.requests += 1
        self.texts.append(str(body.get("input"))[:80])
        return JSONResponse({"id": f"modr-{self.requests}", "model": body.get("model") or "scripted",
                             "results": [{"flagged": False, "categories": {"violence": False},
                                          "category_scores": {"violence": 0.01}}]})

    def serve(self, port: int) -> None:
        """In a thread of its own (its own event loop): never on the benchmark's clock loop."""
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)


class Upstream:
    """The scripted Realtime server, recording when each client event arrives."""

    def __init__(self) -> None:
        from moksori.testing.fake_realtime import FakeRealtimeServer

        self.fake = FakeRealtimeServer(reply_ms=300, chunk_ms=100)
        self.arrivals: list[tuple[str, float]] = []
        on_client = self.fake.on_client

        def record(conn, e):  # type: ignore[no-untyped-def]
            if e.get("type") in ("input_audio_buffer.commit", "response.create"):
                self.arrivals.append((e["type"], time.monotonic()))
            on_client(conn, e)

        self.fake.on_client = record  # type: ignore[method-assign]
        emit = self.fake._emit

        def no_transcripts(conn, event):  # type: ignore[no-untyped-def]
            # the fake "transcribes" every commit; a real upstream with transcription off does not,
            # and its instant "(speech)" would be the words checked instead of the local STT's
            if event is None or event.get("type") != "conversation.item.input_audio_transcription.completed":
                emit(conn, event)

        self.fake._emit = no_transcripts  # type: ignore[method-assign]

    def after(self, kind: str, t: float) -> float | None:
        return next((at for k, at in self.arrivals if k == kind and at > t), None)


async def turn(url: str, up: Upstream, info: dict, moderation: ScriptedModeration) -> dict:
    from websockets.asyncio.client import connect

    audio = _audio(info)
    async with connect(url, additional_headers={"Authorization": "Bearer unused"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": SESSION}))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        t0 = time.monotonic()
        eos = t0 + info["duration"] - info["trail"]

        async def send(chunk) -> None:  # type: ignore[no-untyped-def]
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(chunk.astype("<i2").tobytes()).decode()}))

        feeder = asyncio.create_task(_feed(t0, audio, send))
        try:
            async with asyncio.timeout(30):
                while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
                    pass
        except TimeoutError:
            pass
        finally:
            feeder.cancel()
    commit = up.after("input_audio_buffer.commit", t0)
    create = up.after("response.create", commit) if commit is not None else None
    if commit is None or create is None:
        return {"hold_ms": None, "eos_ms": None}
    out = {"hold_ms": round(1000 * (create - commit), 1), "eos_ms": round(1000 * (create - eos), 1)}
    asked = next((at for at in moderation.arrivals if at > t0), None)
    if asked is not None:  # the moderation request reaching the stand-in, from the commit
        out["moderation_request_ms"] = round(1000 * (asked - commit), 1)
    return out


async def run(args) -> dict:
    from moksori.testing.fake_realtime import serve_websocket

    info = manifest()
    load_before = list(os.getloadavg())
    up = Upstream()
    ws_server = await serve_websocket(up.fake)
    up_port = ws_server.sockets[0].getsockname()[1]
    moderation = ScriptedModeration()
    mod_port = _free_port()
    moderation.serve(mod_port)
    base = {"MOKSORI_BRAIN": "realtime", "MOKSORI_REALTIME_URL": f"ws://127.0.0.1:{up_port}/v1/realtime?model=fake",
            "MOKSORI_REALTIME_API_KEY": "unused", "MOKSORI_REALTIME_TURN_DETECTION": "moksori",
            "MOKSORI_REALTIME_TRANSCRIPTION_MODEL": "", "MOKSORI_STORE_URL": "none", "MOKSORI_LANGUAGE": "en",
            "MOKSORI_CONFIG": ""}
    extra = {"off": {},
             "terms": {"MOKSORI_GUARDRAILS_BLOCK_TERMS_EN": "attack,bomb,password",
                       "MOKSORI_GUARDRAILS_BLOCK_PATTERNS_EN": r"\bkill\w*"},
             "moderation": {"MOKSORI_GUARDRAILS_MODERATION_URL": f"http://127.0.0.1:{mod_port}/v1",
                            "MOKSORI_GUARDRAILS_MODERATION_API_KEY": "unused"}}
    procs, urls = [], {}
    rows: list[dict] = []
    try:
        for name in FRONTS:
            port = _free_port()
            print(f"starting moksori serve on 127.0.0.1:{port}: realtime brain, guardrails {name}...", file=sys.stderr)
            procs.append(await asyncio.to_thread(start, port, {**base, **extra[name]}))
            urls[name] = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        for rep in range(args.reps):
            for utt in NAMES[:args.utterances]:
                order = FRONTS if rep % 2 == 0 else tuple(reversed(FRONTS))  # no front always goes first
                for name in order:
                    r = await turn(urls[name], up, info[utt], moderation)
                    rows.append({"front": name, "utterance": utt, "rep": rep, **r})
                    asked = f", moderation asked at +{r['moderation_request_ms']} ms" \
                        if "moderation_request_ms" in r else ""
                    print(f"{utt} rep {rep} {name:10s}: held {r['hold_ms']} ms{asked}, end of speech -> "
                          f"response.create {r['eos_ms']} ms", file=sys.stderr)
                    await asyncio.sleep(0.5)
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
            proc.wait(10)
        ws_server.close()
    summary: dict = {"what": "realtime brain, moksori turns: the user turn held before response.create while "
                             "the input guardrail checks it",
                     "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
                     "moderation_requests": moderation.requests, "moderated_texts": moderation.texts}
    for name in FRONTS:
        for key in ("hold_ms", "eos_ms"):
            xs = [r[key] for r in rows if r["front"] == name and r[key] is not None]
            if xs:
                summary.setdefault(name, {})[key] = {"n": len(xs), "p50": round(pct(xs, 0.5), 1),
                                                     "p95": round(pct(xs, 0.95), 1), "max": max(xs)}
    asked = [r["moderation_request_ms"] for r in rows if "moderation_request_ms" in r]
    if asked:  # commit -> the words reaching the moderation stand-in (waiting for the local STT, sending)
        summary["moderation"]["request_ms"] = {"n": len(asked), "p50": round(pct(asked, 0.5), 1),
                                               "p95": round(pct(asked, 0.95), 1), "max": max(asked)}
        # ... and from there to response.create: the check itself (a loopback round trip), once the words are known
        check = [r["hold_ms"] - r["moderation_request_ms"] for r in rows if "moderation_request_ms" in r]
        summary["moderation"]["check_ms"] = {"n": len(check), "p50": round(pct(check, 0.5), 1),
                                             "p95": round(pct(check, 0.95), 1), "max": round(max(check), 1)}
    pairs: dict = {}
    for r in rows:
        pairs.setdefault((r["utterance"], r["rep"]), {})[r["front"]] = r["eos_ms"]
    for name in FRONTS[1:]:
        diffs = [p[name] - p["off"] for p in pairs.values() if p.get(name) is not None and p.get("off") is not None]
        if diffs:
            summary[f"{name}_added_ms"] = {"n": len(diffs), "p50": round(pct(diffs, 0.5), 1),
                                           "p95": round(pct(diffs, 0.95), 1)}
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--utterances", type=int, default=len(NAMES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
