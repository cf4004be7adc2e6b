"""The Realtime connection's parts (issue 15's split), logic only, with the scripted fakes in
virtual time: the dispatch table covers every client event the codec parses, and the client's
input-audio account (`server/realtime_input.py`) does its two jobs, alone and through the
connection. The whole connection is covered against real servers and SDK clients in
test_realtime_server.py, test_realtime_clients.py and test_webrtc.py."""

from __future__ import annotations

import base64
import json
import typing
from typing import Any

import numpy as np
import pytest

from moksori.errors import ProtocolError
from moksori.protocols import realtime as rt
from moksori.server.realtime_conn import RealtimeConnection
from moksori.server.realtime_input import ClientAudio
from moksori.settings import Settings
from moksori.testing.fakes import fake_stack
from moksori.testing.virtual_time import run_virtual


def _conn(settings: Settings, sent: list[dict[str, Any]]) -> RealtimeConnection:
    async def send(ev: dict[str, Any]) -> None:
        sent.append(ev)

    return RealtimeConnection(fake_stack(), settings, rt.Flavor.GA, send)


def test_every_client_event_the_codec_parses_has_a_handler() -> None:
    async def main() -> tuple[set[type], list[dict[str, Any]]]:
        sent: list[dict[str, Any]] = []
        conn = _conn(Settings(turn={"provider": "none"}), sent)
        await conn.start()
        handled = set(conn._handlers)
        for raw in ({"type": "input_audio_buffer.clear"}, {"type": "output_audio_buffer.clear"},
                    {"type": "conversation.item.retrieve", "item_id": "nope"}, {"type": "response.cancel"}):
            await conn.on_message(json.dumps(raw))
        await conn.close()
        return handled, sent

    handled, sent = run_virtual(main())
    assert handled == set(typing.get_args(rt.ClientEvent))
    codes = [e["error"]["code"] for e in sent if e["type"] == "error"]
    assert "unsupported_event" not in codes
    assert codes == ["item_not_found", "response_cancel_not_active"]  # the handlers' own answers
    assert "input_audio_buffer.cleared" in [e["type"] for e in sent]


def test_the_manual_buffer_is_full_once_then_drops_audio_until_emptied() -> None:
    audio = ClientAudio(max_buffer_s=1.0)
    assert audio.take(600, 0.6, manual=True)
    with pytest.raises(ProtocolError) as full:
        audio.take(600, 1.2, manual=True)
    assert full.value.code == "input_audio_buffer_full" and "1 s" in str(full.value)
    assert not audio.take(600, 1.8, manual=True)  # dropped, and said only once
    assert audio.manual_ms == 600
    audio.emptied()
    assert audio.manual_ms == 0 and audio.take(900, 2.7, manual=True)
    with pytest.raises(ProtocolError):  # full again after the commit: said again
        audio.take(200, 2.9, manual=True)
    assert audio.take(5000, 8.0, manual=False)  # with VAD there is no buffer to fill


def test_session_time_maps_to_positions_in_the_clients_audio() -> None:
    audio = ClientAudio(max_buffer_s=10.0)
    assert audio.ms_at(5.0) == 0  # nothing received yet
    for i in range(1, 5):  # 250 ms of audio arriving every 250 ms from t = 1.0 (exact in binary)
        audio.take(250, 1.0 + i * 0.25, manual=False)
    assert audio.ms_at(1.375) == 375  # between two arrivals: interpolated
    assert audio.ms_at(2.0) == 1000 and audio.ms_at(9.0) == 1000  # after the last: where it ended
    assert audio.ms_at(1.125) == 125  # before the first mark: counted back from it
    assert audio.ms_at(0.0) == 0


def test_a_manual_mode_connection_reports_a_full_buffer_once_and_commits_what_it_kept() -> None:
    chunk = base64.b64encode(np.zeros(2400, "<i2").tobytes()).decode()  # 100 ms at 24 kHz

    async def main() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        conn = _conn(Settings(turn={"provider": "none"}, server={"max_input_buffer_s": 1}), sent)
        await conn.start()
        await conn.on_message(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
        for _ in range(15):  # 1.5 s into a 1 s buffer
            await conn.on_message(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await conn.on_message(json.dumps({"type": "input_audio_buffer.clear"}))
        await conn.on_message(json.dumps({"type": "input_audio_buffer.commit"}))  # empty after the clear
        for _ in range(15):
            await conn.on_message(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await conn.close()
        return sent

    sent = run_virtual(main())
    codes = [e["error"]["code"] for e in sent if e["type"] == "error"]
    # once per filling: the clear empties it, so the second filling is reported again
    assert codes == ["input_audio_buffer_full", "input_audio_buffer_commit_empty", "input_audio_buffer_full"]


def test_an_item_with_more_audio_than_the_input_buffer_holds_is_refused_untranscribed() -> None:
    """conversation.item.create with audio is transcribed in one STT job that cannot stop midway:
    minutes of it (3 MB of u-law is 6 minutes) held the model for ~50 s after its client left."""
    def item(seconds: float) -> str:
        audio = base64.b64encode(np.zeros(int(24000 * seconds), "<i2").tobytes()).decode()
        return json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]}})

    async def main() -> tuple[list[dict[str, Any]], int]:
        sent: list[dict[str, Any]] = []
        conn = _conn(Settings(server={"max_input_buffer_s": 1}), sent)
        stt = conn.session.stack.stt
        await conn.start()
        await conn.on_message(item(1.5))
        refused_calls = len(stt.calls)
        await conn.on_message(item(0.5))
        await conn.close()
        return sent, refused_calls

    sent, calls_after_refusal = run_virtual(main())
    errors = [e["error"] for e in sent if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["audio_too_long"] and "at most 1 s" in errors[0]["message"]
    assert calls_after_refusal == 0
    assert [e["type"] for e in sent].count("conversation.item.added") == 1  # the short one


def test_a_reply_cut_short_is_incomplete_on_the_wire() -> None:
    """A realtime brain's reply cut at its text limit ends `incomplete` in the engine; the wire's
    `response.done` said `completed` (only the separate error told the client it was cut)."""
    from moksori.engine import events as E
    from moksori.providers.base import Usage

    async def main() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        conn = _conn(Settings(turn={"provider": "none"}), sent)
        await conn.start()
        conn.session.publish(E.AgentResponseStarted(t=0.0, response_id="r1", item_id="i1", turn_id=None,
                                                    modalities=("text",)))
        conn.session.publish(E.AgentResponseDone(
            t=0.1, response_id="r1", item_id="i1", turn_id=None, text="word word", generated_text="word word",
            interrupted=False, status="incomplete", reason="upstream_text_limit", language="en",
            function_calls=(), usage=Usage(), modalities=("text",), in_conversation=True))
        await conn.close()
        return sent

    sent = run_virtual(main())
    done, = [e for e in sent if e["type"] == "response.done"]
    assert done["response"]["status"] == "incomplete"
    assert done["response"]["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
