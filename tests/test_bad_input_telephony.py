"""Bad input on the phone media streams of a real `moksori serve` (embedded models, the store on).

Found by driving the server as a broken or hostile carrier:

* a `\\ud800` escape in a start's stream token (JSON decodes it to a lone surrogate, which no
  UTF-8 encoder takes) raised out of the token check: a traceback, and the stream closed 1002
  with no reason instead of 1008 "invalid or expired stream token";
* a caller's number written with other digits than ASCII ones (fullwidth `１`, Arabic-Indic `٣`)
  raised while hashing the number into the caller's user id: a traceback, the call ended as a
  `server_error` before its greeting; one holding a lone surrogate was taken, and then made the
  debug endpoint's JSON (and anything else encoding the call's record) fail.

Also kept here, because no other test drives them through a real server: every carrier's junk
(binary where text is expected and the reverse, malformed JSON, media before `start`, a second
`start`, bad or huge base64, odd-length PCM, unknown events) is counted and skipped while the call
goes on, what follows a `stop` is not read, and a frame over the WebSocket size limit closes the
stream 1009. After each probe the server still answers a good call, and its log has no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from servers import ServerProcess
from speech import prepared_data_dir, requires_speech
from test_telephony_calls import call_summary, get_json, serve, sid, token, wait_warm

from moksori.store.identity import phone_user_id

pytestmark = [pytest.mark.models, requires_speech]

HASH_SECRET = "hash-secret-for-bad-input-tests"
CARRIERS = ("twilio", "telnyx", "plivo", "vonage")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    with serve({"MOKSORI_STORE_HASH_SECRET": HASH_SECRET}, prepared_data_dir(tmp_path_factory)) as srv:
        wait_warm(srv.url)
        yield srv


def start_message(carrier: str, call_id: str, tok: str, number: str = "+15550001111") -> str:
    """A carrier's start as its docs show it: the stream token and the caller's number where
    that carrier carries them."""
    if carrier == "twilio":
        return json.dumps({"event": "start", "streamSid": f"MZ-{call_id}", "start": {
            "streamSid": f"MZ-{call_id}", "callSid": call_id, "customParameters": {"token": tok, "from": number},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    if carrier == "telnyx":
        return json.dumps({"event": "start", "stream_id": f"st-{call_id}", "start": {
            "call_control_id": call_id, "from": number, "to": "+15550002222", "custom_parameters": {"token": tok},
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}})
    if carrier == "plivo":
        return json.dumps({"event": "start", "extra_headers": f"token={tok};from={number}", "start": {
            "streamId": f"s-{call_id}", "callId": call_id,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}})
    return json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "call_uuid": call_id,
                       "token": tok, "from": number})


def media_message(carrier: str, payload: bytes) -> str | bytes:
    if carrier == "vonage":
        return payload
    return json.dumps({"event": "media", "media": {"track": "inbound", "payload": base64.b64encode(payload).decode()}})


def stop_message(carrier: str) -> str | None:
    return None if carrier == "vonage" else json.dumps({"event": "stop"})


def is_agent_audio(message: str | bytes) -> bool:
    return isinstance(message, bytes) or '"media"' in message or '"playAudio"' in message


@dataclass
class Probe:
    """What a carrier saw of one stream."""

    code: int | None = None
    reason: str = ""
    agent_audio: int = 0  # media messages the agent sent


async def run_stream(srv: ServerProcess, carrier: str, before: list[str | bytes], *, greeted: bool,
                     after: list[str | bytes] = (), hang_up: bool = True, timeout: float = 10.0) -> Probe:
    """Send `before`; with `greeted`, wait for the agent's first audio, then send `after`, the stop
    (and close, with `hang_up`); read until the server closes the socket (or `timeout`)."""
    probe = Probe()
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/telephony/{carrier}/stream", max_size=None) as ws:
        for m in before:
            await ws.send(m)
        deadline = time.monotonic() + timeout
        try:
            while greeted and probe.agent_audio == 0:
                probe.agent_audio += is_agent_audio(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            for m in after:
                await ws.send(m)
            if hang_up:
                stop = stop_message(carrier)
                if stop is not None:
                    await ws.send(stop)
                    for m in after:  # what follows the stop is never read
                        await ws.send(m)
                else:
                    await ws.close()
            while True:
                probe.agent_audio += is_agent_audio(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        probe.code, probe.reason = ws.close_code, ws.close_reason or ""
    return probe


def good_call(srv: ServerProcess, n: int) -> None:
    """The server still answers a well-formed call with its greeting, and ends it on the stop."""
    call_id = sid("CA", 0xB00 + n)
    probe = asyncio.run(run_stream(srv, "twilio", [start_message("twilio", call_id, token(call_id))], greeted=True))
    assert probe.agent_audio >= 1 and probe.code == 1000, probe
    assert call_summary(srv.url, call_id)["end_reason"] == "carrier_stop"


def conversations_of(srv: ServerProcess, user: str) -> list[dict[str, Any]]:
    """The user's stored conversations; none (a 404) until the store has written the first."""
    try:
        return get_json(srv.url, f"/v1/conversations?user={user}")["data"]
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        return []


def new_log(srv: ServerProcess, since: int) -> str:
    return srv.log_text()[since:]


# --------------------------------------------------------------------------- text no encoder takes


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_lone_surrogate_in_the_stream_token_is_a_bad_token(server: ServerProcess, carrier: str) -> None:
    """Was a traceback and a 1002 close with no reason."""
    mark = len(server.log_text())
    call_id = f"surrogate-token-{carrier}"
    probe = asyncio.run(run_stream(server, carrier, [start_message(carrier, call_id, "v2.9999999999.\ud800")],
                                   greeted=False, hang_up=False, timeout=5))
    assert probe.code == 1008 and "stream token" in probe.reason and probe.agent_audio == 0, probe
    log = new_log(server, mark)
    assert "Traceback" not in log and "stream refused" in log, log[-3000:]
    good_call(server, CARRIERS.index(carrier))


def _digits(number: str, zero: str) -> str:
    return number.translate({ord(d): chr(ord(zero) + int(d)) for d in "0123456789"})


NUMBERS = {  # how a caller's number is written -> the number it is
    "fullwidth": lambda n: _digits(n, "\uff10"),
    "arabic-indic": lambda n: _digits(n, "\u0660"),
    "lone-surrogate": lambda n: n[:5] + "\ud800" + n[5:],
}


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("written", sorted(NUMBERS))
def test_a_caller_number_in_other_digits_is_greeted_and_recorded_as_that_caller(
        server: ServerProcess, carrier: str, written: str) -> None:
    """Non-ASCII digits were a traceback and a call ended before its greeting; a lone surrogate
    made the call's record unencodable (the debug endpoint answered 500)."""
    n = 10 * CARRIERS.index(carrier) + sorted(NUMBERS).index(written)
    number = f"+1555{n:07d}"
    call_id = f"number-{carrier}-{written}"
    mark = len(server.log_text())
    start = start_message(carrier, call_id, token(call_id, carrier), NUMBERS[written](number))
    probe = asyncio.run(run_stream(server, carrier, [start], greeted=True))
    assert probe.agent_audio >= 1, probe
    summary = call_summary(server.url, call_id)
    assert summary["end_reason"] in ("carrier_stop", "carrier_hung_up"), summary["end_reason"]
    json.dumps(summary, ensure_ascii=False).encode("utf-8")  # the record is text any encoder takes
    # the conversation belongs to the caller: the same user id as the number in ASCII digits
    user = phone_user_id(number, HASH_SECRET.encode())
    deadline = time.monotonic() + 10
    while not (found := conversations_of(server, user)):
        assert time.monotonic() < deadline, f"no conversation of {user} ({number} written {written})"
        time.sleep(0.1)
    assert found[0]["metadata"]["carrier"] == carrier
    log = new_log(server, mark)
    assert "Traceback" not in log, log[-3000:]
    good_call(server, 16 + n)


# --------------------------------------------------------------------------- carriers' junk

SILENCE_ULAW = b"\xff" * 160
SILENCE_L16 = b"\0\0" * 320


def junk(carrier: str, start: str) -> list[str | bytes]:
    """Messages the carrier's protocol does not allow, each counted as one bad message, and a few
    harmless ones that are not (unknown events)."""
    if carrier == "vonage":
        return [
            b"\0\0\0",  # odd-length 16-bit PCM
            b"\0" * 70_000,  # far larger than a 20 ms frame
            "{not json",  # text where audio is expected, and no JSON at all
            '"just a string"',
            '{"event": 5}',
            start,  # a second start
            '{"event": "websocket:dtmf", "digit": "x"}',
            '{"event": "websocket:no-such-event"}',  # unknown: ignored, not bad
        ]
    return [
        b"\xff\xfe\xfd",  # binary, not UTF-8 JSON
        "{not json",
        '{"event": 5}',
        json.dumps({"event": "media", "media": {"payload": "***not base64***"}}),
        json.dumps({"event": "media", "media": {"payload": "A" * 70_000}}),  # far larger than 20 ms
        json.dumps({"event": "media", "media": {"payload": 12}}),
        json.dumps({"event": "start", "start": {}}),  # a second start, broken
        start,  # a second start, well-formed
        json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}}),
        json.dumps({"event": "no-such-event"}),  # unknown: ignored, not bad
    ]


@pytest.mark.parametrize("carrier", ["telnyx", "plivo", "vonage"])  # Twilio: test_telephony_calls.py
def test_junk_is_counted_and_skipped_and_nothing_after_the_stop_is_read(server: ServerProcess, carrier: str) -> None:
    call_id = f"junk-{carrier}"
    mark = len(server.log_text())
    start = start_message(carrier, call_id, token(call_id, carrier))
    silence = SILENCE_L16 if carrier == "vonage" else SILENCE_ULAW
    messages = junk(carrier, start)
    before = [media_message(carrier, silence), start]  # media before the start: bad
    after = [*messages, media_message(carrier, silence)]
    probe = asyncio.run(run_stream(server, carrier, before, greeted=True, after=after))
    assert probe.agent_audio >= 1 and probe.code == 1000, probe
    summary = call_summary(server.url, call_id)
    assert summary["end_reason"] == ("carrier_hung_up" if carrier == "vonage" else "carrier_stop")
    # every bad message once (the unknown event is not one), and none of what followed the stop
    assert summary["bad_messages"] == 1 + len(messages) - 1, summary["bad_messages"]
    log = new_log(server, mark)
    assert "Traceback" not in log, log[-3000:]
    good_call(server, 48 + CARRIERS.index(carrier))


def test_a_frame_over_the_socket_limit_closes_the_stream_1009(server: ServerProcess) -> None:
    call_id = sid("CA", 0xF00)
    mark = len(server.log_text())
    probe = asyncio.run(run_stream(server, "twilio", [start_message("twilio", call_id, token(call_id))], greeted=True,
                                   after=["x" * (17 << 20)], hang_up=False, timeout=30))
    assert probe.code == 1009 and "exceeds" in probe.reason, probe
    summary: dict[str, Any] = call_summary(server.url, call_id)
    assert summary["end_reason"] in ("carrier_hung_up", "socket_error"), summary["end_reason"]
    stats = get_json(server.url, "/telephony/debug/stats")
    assert stats["active_calls"] == 0, stats
    log = new_log(server, mark)
    assert "Traceback" not in log, log[-3000:]
    good_call(server, 60)
