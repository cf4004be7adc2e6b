"""`idle_timeout_ms`: after the agent's audio ends, silence from the user commits an empty turn
and asks for a reply, as OpenAI's `server_vad` does. Engine logic in virtual time with scripted
fakes; the Realtime bridge's events are validated with the openai SDK's own models."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import numpy as np
import pytest

from moksori.engine import events as E
from moksori.engine.config import SessionConfig, config_from_settings
from moksori.engine.session import Session
from moksori.engine.turns import TurnConfig
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual

IDLE = SessionConfig(output_rate=16000, partial_interval_ms=0,
                     turn=TurnConfig(mode="silence", idle_timeout_ms=3000))


def _llm():
    return ScriptedLLM(lambda req: "Are you still there?" if "said nothing" in req.messages[0].content else "Hi.")


def test_silence_after_the_reply_commits_an_empty_turn_and_the_agent_speaks_again() -> None:
    async def main():
        llm = _llm()
        s = Session(fake_stack(stt=ScriptedSTT(["hello."]), llm=llm), IDLE)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(6.0)])
        await settle(s)
        await s.close()
        return rec, s, llm

    rec, s, llm = run_virtual(main())
    first_done = rec.of(E.AgentResponseDone)[0]
    audio_done = rec.of(E.AgentAudioDone)[0]
    (idle,) = rec.of(E.UserIdleTimeout)
    # the timer starts when the listener has heard the reply's last sample (the response's end)
    assert idle.idle_since == pytest.approx(first_done.t, abs=0.002) and idle.idle_since >= audio_done.t
    assert idle.t - idle.idle_since == pytest.approx(3.0, abs=0.01)
    ended = [e for e in rec.of(E.UserTurnEnded) if e.reason == "idle_timeout"]
    assert len(ended) == 1 and ended[0].item_id == idle.item_id and ended[0].silence_ms == 3000
    transcript = [e for e in rec.of(E.UserTranscript) if e.item_id == idle.item_id]
    assert transcript and transcript[0].text == ""
    assert [e.status for e in rec.of(E.AgentResponseDone)] == ["completed", "completed"]
    assert rec.of(E.AgentResponseDone)[1].text == "Are you still there?"
    empty = s.memory.get(idle.item_id)
    assert empty is not None and empty.role == "user" and empty.text == "" and empty.audio
    assert "said nothing" in llm.requests[-1].messages[0].content  # the reply knows why it speaks


def test_speech_before_the_timeout_disarms_it() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hello.", "tell me more."]), llm=_llm()), IDLE)
        # the first reply ends around t=2.6; the user speaks again 2 s later, then silence
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(3.3), tone(1.0), quiet(2.0)])
        await s.close()
        return rec

    rec = run_virtual(main())
    assert rec.of(E.UserIdleTimeout) == []
    assert [e.reason for e in rec.of(E.UserTurnEnded)] == ["silence", "silence"]


def test_repeats_after_each_reply_and_never_without_a_setting_or_in_manual_mode() -> None:
    async def main(cfg):
        s = Session(fake_stack(stt=ScriptedSTT(["hello."]), llm=_llm()), cfg)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(12.0)])
        await s.close()
        return rec

    rec = run_virtual(main(IDLE))
    assert len(rec.of(E.UserIdleTimeout)) >= 2  # each prompt is itself a reply that ends
    assert len(rec.of(E.AgentResponseDone)) == len(rec.of(E.UserIdleTimeout)) + 1
    assert run_virtual(main(replace(IDLE, turn=TurnConfig(mode="silence")))).of(E.UserIdleTimeout) == []
    assert run_virtual(main(replace(IDLE, turn=TurnConfig(mode="manual", idle_timeout_ms=3000)))) \
        .of(E.UserIdleTimeout) == []


def test_settings_reach_phone_calls_and_every_entry_point() -> None:
    from moksori.settings import Settings

    cfg = config_from_settings(Settings(turn={"idle_timeout_ms": 8000}, agent={"max_history_messages": 6}))
    assert cfg.turn.idle_timeout_ms == 8000 and cfg.max_history_messages == 6

    async def main():
        s = Session(fake_stack(), cfg)
        n = s.memory.max_messages
        s.update(replace(cfg, max_history_messages=10))
        m = s.memory.max_messages
        await s.close()
        return n, m

    assert run_virtual(main()) == (6, 10)


# --------------------------------------------------------------------------- the Realtime bridge


def test_realtime_sends_timeout_triggered_then_commits_and_responds() -> None:
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    from moksori.protocols.realtime import Flavor
    from moksori.server.realtime_conn import RealtimeConnection
    from moksori.settings import Settings

    adapter = TypeAdapter(RealtimeServerEvent)

    async def main():
        sent: list[dict] = []

        async def send(ev: dict) -> None:
            sent.append(ev)

        stack = fake_stack(stt=ScriptedSTT(["hello."]), llm=_llm())
        conn = RealtimeConnection(stack, Settings(turn={"provider": "none"}), Flavor.GA, send)
        await conn.start()
        await conn.on_message(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": 400, "idle_timeout_ms": 3000}}}}}))
        audio = np.concatenate([quiet(0.3, rate=24000).samples, tone(1.0, rate=24000).samples,
                                quiet(6.0, rate=24000).samples])
        step = 480  # 20 ms at 24 kHz
        clock = conn.session.clock
        t0 = clock.now()
        for i in range(0, len(audio), step):
            chunk = base64.b64encode(audio[i:i + step].astype("<i2").tobytes()).decode()
            await conn.on_message(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await clock.sleep(t0 + (i + step) / 24000 - clock.now())
        await conn.close()
        return sent

    sent = run_virtual(main())
    updated = next(e for e in sent if e["type"] == "session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 3000
    types = [e["type"] for e in sent]
    i = types.index("input_audio_buffer.timeout_triggered")
    ev = sent[i]
    adapter.validate_python(ev)
    assert 2900 <= ev["audio_end_ms"] - ev["audio_start_ms"] <= 3100
    assert types[i + 1] == "input_audio_buffer.committed" and sent[i + 1]["item_id"] == ev["item_id"]
    assert "response.created" in types[i:] and "response.done" in types[i:]
    assert "error" not in types, [e for e in sent if e["type"] == "error"]
