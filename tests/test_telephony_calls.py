"""Phone calls end to end: a real `moksori serve` on 127.0.0.1 with the embedded models, and a
simulated carrier (tests/carrier_sim.py) streaming real 8 kHz speech at real-time pace.

The call-control test runs a second server whose LLM is a scripted OpenAI-compatible server on
loopback (SmolLM2-135M cannot be trusted to pick a tool), with the carrier's REST API replaced
by a local recording server. The barge-in and hang-up-mid-reply tests run a third whose LLM is
`tests/scripted_llm_server.py` (a named stand-in: their premise is a reply long enough to be
spoken over or hung up on, and SmolLM2's reply length depends on the CPU). None of this was run
against the live carriers.

Run with -s to see the per-call figures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from carrier_sim import CarrierSim, recording_api
from scripted_llm_server import LONG_REPLY, SHORT_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech, utt, word_errors

from moksori.audio.frames import Frame
from moksori.audio.wav import load_audio
from moksori.telephony.signatures import check_stream_token, make_stream_token

pytestmark = [pytest.mark.models, pytest.mark.slow, requires_speech]

PUBLIC_URL = "https://voice.example.test"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
STREAM_SECRET = "stream-secret-for-tests"
ACCOUNT_SID = "AC" + "0" * 32


def sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:032x}"


def speech8k(name: str) -> Frame:
    frame = load_audio(utt(name).path_8k)
    assert frame.rate == 8000
    return frame


def speech16k(name: str) -> Frame:
    frame = load_audio(utt(name).path)
    assert frame.rate == 16000
    return frame


def token(call_id: str, carrier: str = "twilio", **kw: Any) -> str:
    return make_stream_token(STREAM_SECRET.encode(), call_id, carrier=carrier, now=kw.pop("now", int(time.time())),
                             **kw)


def get_json(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.load(r)


def wait_warm(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_json(base, "/telephony/debug/stats").get("warm"):
            return
        time.sleep(0.1)
    raise TimeoutError("the greeting was never pre-synthesised")


def call_summary(base: str, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The server's record of a finished call (timeline and memory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in get_json(base, "/telephony/debug/calls")["recent"]:
            if c["call_id"] == call_id:
                return c
        time.sleep(0.1)
    raise AssertionError(f"call {call_id} never ended on the server")


async def wait_replies(srv: ServerProcess, call_id: str, n: int, timeout: float = 90.0) -> None:
    """Wait until the server has finished `n` replies on this call (a gap between two clauses
    of a slow reply is not its end), then until the carrier has played them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = (await asyncio.to_thread(get_json, srv.url, "/telephony/debug/calls"))["active"]
        mine = [c for c in calls if c["call_id"] == call_id]
        if mine and len(events(mine[0], "agent.response_done")) >= n:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"call {call_id}: fewer than {n} replies after {timeout} s")


def events(summary: dict[str, Any], typ: str) -> list[dict[str, Any]]:
    return [e for e in summary["timeline"] if e["type"] == typ]


def messages(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["text"]) for m in summary["memory"] if m["type"] == "message"]


def serve(env: dict[str, str], data_dir: Any) -> ServerProcess:
    port = free_port()
    base_env = {
        "MOKSORI_DATA_DIR": str(data_dir),
        "MOKSORI_LANGUAGE": "en",
        "MOKSORI_PUBLIC_URL": PUBLIC_URL,
        "MOKSORI_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "MOKSORI_TELEPHONY_STREAM_SECRET": STREAM_SECRET,
        "MOKSORI_TELEPHONY_DEBUG": "1",
        "MOKSORI_LLM_MAX_TOKENS": "40",  # short replies keep real-time calls short
        "MOKSORI_CONFIG": "",
        "PYTHONUNBUFFERED": "1",
    }
    return ServerProcess([sys.executable, "-m", "moksori", "serve", "--port", str(port)], port=port,
                         ready_path="/health", ready_timeout_s=120, env={**base_env, **env})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(data_dir) -> Iterator[ServerProcess]:
    with serve({}, data_dir) as srv:
        wait_warm(srv.url)
        yield srv


class FirstAnswerLong(ScriptedLLM):
    """Stands in for the packaged LLM where a reply's length is the test's premise: SmolLM2's reply
    to the same words depends on the CPU and on what its KV cache held before (160 tokens on one
    machine, 3, "The thing.", on another), and a reply over before the caller speaks over it or
    hangs up on it tests nothing. A call's first answer is LONG_REPLY (about 15 s of speech), later
    ones SHORT_REPLY (so the turn after a barge-in does not play for 15 s); never a tool call.
    VAD, Whisper, smart-turn and Piper stay the real ones."""

    def decide(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        return (LONG_REPLY if len(users) == 1 else SHORT_REPLY), None


@pytest.fixture(scope="module")
def long_reply_server(data_dir) -> Iterator[ServerProcess]:
    """The same server as `server`, its LLM the scripted stand-in `FirstAnswerLong` on loopback."""
    llm = FirstAnswerLong()
    with ThreadedASGIServer(llm.app) as llm_srv, serve({"MOKSORI_LLM_PROVIDER": "openai",
                                                         "MOKSORI_LLM_BASE_URL": llm_srv.url + "/v1",
                                                         "MOKSORI_LLM_MODEL": "scripted"}, data_dir) as srv:
        wait_warm(srv.url)
        yield srv


def audible_until(call: CarrierSim, since: float, until: float) -> float:
    """When the agent audio that arrived between `since` and `until` ends playing at the carrier (0.0
    if none did): after `until`, the agent is still audible (or a clear cut it)."""
    return max((c.start + len(c.samples) / call.rate for c in call.chunks if since <= c.arrived <= until), default=0.0)


def ws(srv: ServerProcess, carrier: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{srv.port}/telephony/{carrier}/stream{query}"


# --------------------------------------------------------------------------- the Twilio webhook


def twilio_params(call_sid: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT_SID, "ApiVersion": "2010-04-01", "CallSid": call_sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": "+15550001111", "To": "+15557654321", "CallerCountry": "US"}


def twilio_webhook(srv: ServerProcess, params: dict[str, str], signature: str | None) -> httpx.Response:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    return httpx.post(srv.url + "/telephony/twilio/voice", data=params, headers=headers, timeout=10)


def twiml_stream(body: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(body)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, body
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def test_twilio_webhook_answers_signed_requests_only(server: ServerProcess) -> None:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TWILIO_TOKEN)
    url = PUBLIC_URL + "/telephony/twilio/voice"  # what Twilio signs: the public URL, not our Host
    params = twilio_params(sid("CA", 1))
    good = twilio_webhook(server, params, validator.compute_signature(url, params))
    assert good.status_code == 200, good.text
    assert good.headers["content-type"].startswith("application/xml")
    stream_url, stream_params = twiml_stream(good.text)
    assert stream_url == "wss://voice.example.test/telephony/twilio/stream"
    assert stream_params["from"] == "+15550001111" and stream_params["to"] == "+15557654321"
    assert stream_params["call_sid"] == params["CallSid"]
    assert check_stream_token(STREAM_SECRET.encode(), stream_params["token"], params["CallSid"], carrier="twilio",
                              now=int(time.time()))

    tampered = dict(params, To="+19005550000")
    local_url = server.url + "/telephony/twilio/voice"  # signed for the Host we listen on: wrong URL
    for bad in (
        twilio_webhook(server, params, None),
        twilio_webhook(server, params, ""),
        twilio_webhook(server, tampered, validator.compute_signature(url, params)),
        twilio_webhook(server, params, validator.compute_signature(local_url, params)),
        twilio_webhook(server, params, RequestValidator("another-token").compute_signature(url, params)),
        twilio_webhook(server, params, "bm90IGEgc2lnbmF0dXJl"),
    ):
        assert bad.status_code == 403
        assert "<Response" not in bad.text and "Stream" not in bad.text


# --------------------------------------------------------------------------- stream tokens


async def test_stream_without_a_valid_token_is_closed_before_any_audio(server: ServerProcess) -> None:
    call_id = sid("CA", 2)
    cases = {
        "missing": {},
        "garbage": {"token": "v1.99999999999.not-a-mac"},
        "other call": {"token": token(sid("CA", 3))},
        "expired": {"token": token(call_id, now=int(time.time()) - 3600, ttl_s=600)},
        "other secret": {"token": make_stream_token(b"not-our-secret", call_id, carrier="twilio",
                                                    now=int(time.time()))},
        "other carrier": {"token": token(call_id, "telnyx")},
    }

    async def attempt(params: dict[str, str]) -> tuple[int | None, float]:
        async with CarrierSim.connect(ws(server, "twilio"), call_id=call_id, params=params) as call:
            await call.start()  # and stream caller audio at once
            code = await call.wait_closed(5)
            return code, call.audio_between(0)

    before = get_json(server.url, "/telephony/debug/stats")
    results = await asyncio.gather(*(attempt(p) for p in cases.values()))
    for name, (code, audio) in zip(cases, results):
        assert code == 1008, f"{name}: the stream was not refused (close code {code})"
        assert audio == 0, f"{name}: the server sent audio to an unauthenticated stream"
    after = get_json(server.url, "/telephony/debug/stats")
    assert after["active_calls"] == 0 and after["sessions"] == before["sessions"]
    assert not [c for c in get_json(server.url, "/telephony/debug/calls")["recent"] if c["call_id"] == call_id]


# --------------------------------------------------------------------------- a whole call


async def test_full_call_with_greeting_two_turns_and_dtmf(server: ServerProcess) -> None:
    from twilio.request_validator import RequestValidator

    call_id = sid("CA", 10)
    params = twilio_params(call_id)
    answer = twilio_webhook(server, params, RequestValidator(TWILIO_TOKEN).compute_signature(
        PUBLIC_URL + "/telephony/twilio/voice", params))
    _, stream_params = twiml_stream(answer.text)  # the carrier passes these back on `start`

    async with CarrierSim.connect(ws(server, "twilio"), call_id=call_id, params=stream_params) as call:
        await call.start()
        greeting_at = await call.wait_audio(timeout=5)
        await wait_replies(server, call_id, 1)
        await call.wait_quiet(quiet_s=0.3)
        turns = []
        for n, name in enumerate(("tel_001", "tel_002"), start=2):
            audio = speech8k(name)
            stamps = await call.speak(audio)
            voice_end = stamps[0] + audio.duration - utt(name).lead_trail[1]
            reply_at = await call.wait_audio(after=stamps[-1], timeout=60)
            if name == "tel_001":
                await call.dtmf("5")  # keys pressed while the agent talks
            await wait_replies(server, call_id, n)
            await call.wait_quiet(quiet_s=0.3)
            turns.append(reply_at - voice_end)
        await call.dtmf("#")
        await asyncio.sleep(0.3)
        await call.hang_up()  # `stop`, then the socket closes
        marks_echoed, clears = len(call.marks_sent), len(call.clears)
    greeting_ms = 1000 * (greeting_at - call.started_at)
    print(f"\ngreeting after {greeting_ms:.0f} ms; reply latency {', '.join(f'{t:.2f} s' for t in turns)}")
    assert greeting_ms < 1000

    s = call_summary(server.url, call_id)
    assert s["from"] == "+15550001111" and s["to"] == "+15557654321"
    assert s["end_reason"] == "carrier_stop"
    convo = messages(s)
    roles = [r for r, _ in convo]
    assert roles == ["assistant", "user", "assistant", "user", "assistant"], convo
    assert convo[0][1] == "Hello! How can I help you?"
    for (_, said), name in zip([convo[1], convo[3]], ("tel_001", "tel_002")):
        errors, n = word_errors(utt(name).transcript, said)
        assert errors / n <= 0.3, (name, said)
    assert all(text.strip() for role, text in convo if role == "assistant")
    done = [e for e in events(s, "agent.response_done")]
    assert len(done) == 3 and not any(e["interrupted"] for e in done)
    assert [e["digit"] for e in events(s, "call.dtmf")] == ["5", "#"]
    assert s["digits"] == "5#"
    assert clears == 0 and marks_echoed > 10


# --------------------------------------------------------------------------- barge-in


async def test_barge_in_clears_and_keeps_only_what_was_heard(long_reply_server: ServerProcess) -> None:
    # the reply to tel_004 is the scripted LONG_REPLY (about 15 s): SmolLM2's was over before
    # the caller spoke on some machines
    server = long_reply_server
    call_id = sid("CA", 20)
    async with CarrierSim.connect(ws(server, "twilio"), call_id=call_id, params={"token": token(call_id)}) as call:
        await call.start()
        await call.wait_audio(timeout=5)
        await wait_replies(server, call_id, 1)
        await call.wait_quiet(quiet_s=0.3)
        stamps = await call.speak(speech8k("tel_004"))
        reply_at = await call.wait_audio(after=stamps[-1], timeout=60)
        await asyncio.sleep(max(0.0, reply_at + 0.6 - time.monotonic()))
        barge_at = time.monotonic()
        await call.speak(speech8k("tel_005"))  # the caller talks over the reply
        # the premise: the reply is still playing when the caller starts talking over it
        over_at = audible_until(call, stamps[0], barge_at)
        assert over_at > barge_at, f"premise not met: the reply was over {barge_at - over_at:.2f} s before the barge-in"
        assert call.clears, "barge-in sent no clear"
        clear_at = call.clears[0]
        # the reply's audio can start arriving before the file's trailing silence has been sent
        # (reply_at is the first audio after it): count everything after the caller's utterance began
        played_ms = 1000 * sum(c.played for c in call.chunks if stamps[0] <= c.arrived < clear_at) / call.rate
        early_ms = 1000 * sum(c.played for c in call.chunks if stamps[0] <= c.arrived < reply_at) / call.rate
        await wait_replies(server, call_id, 3)
        await call.wait_quiet(quiet_s=0.3)
        await call.hang_up()
    print(f"\nclear {1000 * (clear_at - barge_at):.0f} ms after the caller started talking over "
          f"{played_ms:.0f} ms of reply ({early_ms:.0f} ms of it before the caller's audio ended)")
    assert barge_at < clear_at < barge_at + 2.0

    s = call_summary(server.url, call_id)
    interrupted = events(s, "agent.interrupted")
    assert interrupted, "the engine never saw the barge-in"
    cut = interrupted[0]
    done = next(e for e in events(s, "agent.response_done") if e["response_id"] == cut["response_id"])
    assert done["interrupted"] and done["text"] == cut["text"]
    # what the caller heard, confirmed by marks, is what is kept (to within a mark of 100 ms)
    assert played_ms - 300 <= cut["heard_ms"] <= played_ms + 60, (cut["heard_ms"], played_ms)
    generated = done["generated_text"].split()
    heard = cut["text"].split()
    assert len(heard) < len(generated) and generated[:len(heard)] == heard, (heard, generated)
    item = next(m for m in s["memory"] if m["id"] == cut["item_id"])
    assert item["text"] == cut["text"] and item["status"] == "incomplete"
    assert item["truncated_at_ms"] == cut["heard_ms"]
    # the caller's second utterance became the next user turn
    users = [t for r, t in messages(s) if r == "user"]
    assert len(users) == 2 and word_errors(utt("tel_005").transcript, users[1])[0] <= 2, users


# --------------------------------------------------------------------------- bad input, hang-ups, leaks


JUNK: list[str | bytes] = [
    "not json at all",
    '{"event": "media", "streamSid": "MZ1", "media": {"payload": "AAAA"',  # truncated
    '{"event": "media", "media": {"payload": "%%%not base64%%%"}}',
    '{"event": 5}',
    "[1, 2, 3]",
    '{"event": "dtmf", "dtmf": {"digit": "X"}}',
    '{"event": "mark", "mark": {}}',
    '{"event": "mark", "mark": {"name": "m999999"}}',  # a mark we never sent
    '{"event": "start", "start": {"streamSid": "MZ9"}}',  # a second, broken start
    '{"event": "media", "media": {"payload": "' + "A" * 200_000 + '"}}',  # far too large
    b"\xff\xfe\x00binary garbage",
    '{"event": "some-future-event", "x": 1}',
    "",
]


async def test_malformed_messages_and_hang_up_mid_reply_leak_nothing(long_reply_server: ServerProcess) -> None:
    # each call's reply is the scripted LONG_REPLY, so the hang-up lands mid-reply on every machine
    server = long_reply_server
    stats0 = get_json(server.url, "/telephony/debug/stats")
    rss = [stats0["rss_kb"]]
    for i, how in enumerate(("abrupt", "stop", "abrupt")):
        call_id = sid("CA", 30 + i)
        async with CarrierSim.connect(ws(server, "twilio"), call_id=call_id, params={"token": token(call_id)}) as call:
            await call.send_raw('{"event": "media", "media": {"payload": "AAAA"}}')  # audio before start
            await call.start()
            for junk in JUNK:
                await call.send_raw(junk)
            await call.wait_audio(timeout=5)  # still a working call: the greeting comes
            await wait_replies(server, call_id, 1)
            await call.wait_quiet(quiet_s=0.3)
            stamps = await call.speak(speech8k("tel_003"))
            reply_at = await call.wait_audio(after=stamps[-1], timeout=60)
            await asyncio.sleep(max(0.0, reply_at + 0.4 - time.monotonic()))
            assert call.closed_at is None
            hang_up_at = time.monotonic()
            # the premise: the reply is still playing when the line goes
            over_at = audible_until(call, stamps[0], hang_up_at)
            assert over_at > hang_up_at, \
                f"premise not met: the reply was over {hang_up_at - over_at:.2f} s before the hang-up"
            if how == "abrupt":  # the line drops: no stop, no close handshake, the TCP socket just goes
                await call.drop()
            else:
                await call.hang_up()
        s = call_summary(server.url, call_id)
        assert s["bad_messages"] >= len(JUNK) - 1, s["bad_messages"]
        # what the carrier did, even when a send of the reply still playing failed first (a send
        # on a closing socket fails at once): the stop or the disconnect queued for the reader
        # names the end, never `send_failed` (tests/test_telephony_send_failure.py)
        expected = ("carrier_hung_up", "socket_error") if how == "abrupt" else ("carrier_stop",)
        assert s["end_reason"] in expected, (how, s["end_reason"])
        assert events(s, "agent.response_started")
        rss.append(get_json(server.url, "/telephony/debug/stats")["rss_kb"])

    # a dropped call's end waits for its last words' transcript (`keep_last_words`): on a loaded
    # machine (a full test run) that took more than 10 s, so the wait is generous; a leak stays
    t_end = time.monotonic()
    deadline = t_end + 30
    while True:
        stats = get_json(server.url, "/telephony/debug/stats")
        ended = stats["tasks"] <= stats0["tasks"] and stats["sessions"] == 0 and stats["active_calls"] == 0
        if ended or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    print(f"\nall ended {time.monotonic() - t_end:.1f} s after the last call; tasks {stats0['tasks']} -> {stats['tasks']}; Python blocks {stats0['py_blocks']} -> {stats['py_blocks']}; "
          f"RSS MiB {[round(r / 1024) for r in rss]} -> {stats['rss_kb'] / 1024:.0f}")
    assert stats["active_calls"] == 0 and stats["sessions"] == 0
    # nothing of the three calls is left: no task, no Session or PhoneCall object, no Python heap
    # growth beyond the debug endpoint's own record of the calls
    assert stats["tasks"] == stats0["tasks"], (stats0, stats)
    # and not a moment later: once a call's last task has ended, nothing references its Session or
    # PhoneCall (a reply cancelled mid-token left them held by cancelled timers for up to the
    # LLM's 30 s idle limit: tests/test_stream_teardown.py); the same snapshot, no waiting
    assert stats["live_sessions"] == 0 and stats["live_calls"] == 0, stats
    assert stats["py_blocks"] - stats0["py_blocks"] < 20_000, (stats0, stats)
    # RSS, roughly: the native libraries' allocators grow in steps (tens of MiB now and then,
    # with or without telephony); a leaked session (its 40 s audio ring, models' buffers) would
    # show as steady growth far beyond this
    assert stats["rss_kb"] - rss[0] < 150 * 1024, rss
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]


# --------------------------------------------------------------------------- the other carriers


async def one_turn(srv: ServerProcess, carrier: str, call_id: str, *, query: str = "",
                   params: dict[str, str] | None = None, name: str = "tel_006") -> dict[str, Any]:
    audio = speech16k(name) if carrier == "vonage" else speech8k(name)
    async with CarrierSim.connect(ws(srv, carrier, query), dialect=carrier, call_id=call_id,
                                  stream_id=f"stream-{carrier}", params=params or {}) as call:
        await call.start()
        greeting_at = await call.wait_audio(timeout=10)
        await wait_replies(srv, call_id, 1)
        await call.wait_quiet(quiet_s=0.3)
        await call.dtmf("7")
        stamps = await call.speak(audio)
        reply_at = await call.wait_audio(after=stamps[-1], timeout=60)
        await wait_replies(srv, call_id, 2)
        await call.wait_quiet(quiet_s=0.3)
        await call.hang_up()
        echoed = len(call.marks_sent)
    s = call_summary(srv.url, call_id)
    return {"summary": s, "greeting_ms": 1000 * (greeting_at - call.started_at),
            "reply_s": reply_at - stamps[-1], "marks": echoed, "name": name}


async def test_telnyx_plivo_and_vonage_calls(server: ServerProcess) -> None:
    telnyx_id = "v3:telnyx-call-control-id-0001"
    plivo_id = "1ed7fd89-df77-4ebf-8196-d5cf7222c918"
    vonage_id = "63f61863-4a51-4f6b-86e1-46edebcf9356"
    results = await asyncio.gather(
        one_turn(server, "telnyx", telnyx_id, params={"token": token(telnyx_id, "telnyx")}, name="tel_006"),
        # Plivo extraHeaders allow only [A-Za-z0-9]: this stream carries its token in the URL
        one_turn(server, "plivo", plivo_id, query=f"?token={token(plivo_id, 'plivo')}", params={"from": "15550001111"},
                 name="tel_008"),
        one_turn(server, "vonage", vonage_id, params={"token": token(vonage_id, "vonage"), "from": "15550002222"},
                 name="tel_009"),
    )
    for carrier, r in zip(("telnyx", "plivo", "vonage"), results):
        s = r["summary"]
        print(f"\n{carrier}: greeting {r['greeting_ms']:.0f} ms, reply {r['reply_s']:.2f} s after the last frame, "
              f"{r['marks']} marks")
        assert s["carrier"] == carrier
        started = events(s, "call.started")[0]
        assert started["rate"] == (16000 if carrier == "vonage" else 8000)
        roles = [role for role, _ in messages(s)]
        assert roles == ["assistant", "user", "assistant"], messages(s)
        errors, n = word_errors(utt(r["name"]).transcript, messages(s)[1][1])
        assert errors / n <= 0.3, messages(s)
        assert [e["digit"] for e in events(s, "call.dtmf")] == ["7"]
        assert r["marks"] > 5, f"{carrier}: no marks were echoed"
        assert r["greeting_ms"] < 1500


# --------------------------------------------------------------------------- call control tools


def scripted_llm(log: list[dict[str, Any]]):
    """An OpenAI-compatible chat server that answers by script: the caller's words pick a tool."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def reply(message: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "model": "scripted",
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        log.append(body)
        last = body["messages"][-1]
        if last["role"] == "tool":
            return reply({"role": "assistant", "content": "Okay."})
        text = (last.get("content") or "").lower()

        def call(name: str, args: dict[str, Any]) -> JSONResponse:
            return reply({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]})

        if "ring" in text:
            return call("end_call", {})
        if "journey" in text:
            return call("transfer_call", {"number": "+1 (555) 123-4567"})
        return reply({"role": "assistant", "content": "Okay."})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


async def test_end_call_and_transfer_tools_use_the_carrier_rest_api(data_dir) -> None:
    llm_log: list[dict[str, Any]] = []
    with recording_api() as (api_base, requests), ThreadedASGIServer(scripted_llm(llm_log)) as llm:
        env = {"MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": llm.url + "/v1",
               "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
               "MOKSORI_TWILIO_API_BASE": api_base, "MOKSORI_TELEPHONY_TRANSFER_NUMBERS": "+15551234567"}
        with serve(env, data_dir) as srv:
            wait_warm(srv.url)
            results = {}
            for n, (name, tool) in enumerate((("tel_001", "end_call"), ("tel_002", "transfer_call"))):
                call_id = sid("CA", 40 + n)
                async with CarrierSim.connect(ws(srv, "twilio"), call_id=call_id,
                                              params={"token": token(call_id)}) as call:
                    await call.start()
                    await call.wait_audio(timeout=5)
                    await wait_replies(srv, call_id, 1)
                    await call.wait_quiet(quiet_s=0.3)
                    stamps = await call.speak(speech8k(name))
                    # the reply can start arriving before the file's trailing silence has been
                    # sent: its first audio after the caller began (the line was quiet before)
                    said_at = await call.wait_audio(after=stamps[0], timeout=60)
                    code = await call.wait_closed(timeout=20)
                    assert code == 1000, f"{tool}: the server did not end the stream (code {code})"
                    said = [c for c in call.chunks if c.arrived >= said_at]
                    results[tool] = {"said_s": sum(len(c.samples) for c in said) / call.rate,
                                     "said_end": max(c.start + len(c.samples) / call.rate for c in said),
                                     "closed_at": call.closed_at, "requests": len(requests)}
                s = call_summary(srv.url, call_id)
                calls = events(s, "agent.tool_call")
                assert [c["name"] for c in calls] == [tool], calls
                assert s["end_reason"] == ("agent_hung_up" if tool == "end_call" else "transferred")
                assert results[tool]["said_s"] > 0.4  # the goodbye / transfer notice was spoken
            offered = {t["function"]["name"] for t in llm_log[0]["tools"]}
            # the call's own tools beside the server's (the built-in current_time, from the AgentKit)
            assert offered == {"end_call", "transfer_call", "current_time"}
    hangup, transfer = requests
    for r in (hangup, transfer):
        assert r.headers["authorization"].startswith("Basic ")
        assert r.headers["content-type"] == "application/x-www-form-urlencoded"
    assert (hangup.method, hangup.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid('CA', 40)}.json")
    assert hangup.form() == {"Status": ["completed"]}
    assert (transfer.method, transfer.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid('CA', 41)}.json")
    assert transfer.form() == {"Twiml": ["<Response><Dial>+15551234567</Dial></Response>"]}
    for tool in ("end_call", "transfer_call"):  # REST only after the caller heard the words (marks)
        assert results[tool]["closed_at"] >= results[tool]["said_end"] - 0.1, results[tool]


# --------------------------------------------------------------------------- 8 kHz speech quality


def test_wer_on_the_8khz_mulaw_path(data_dir) -> None:
    """tel/8k through the phone path: μ-law encode -> decode -> the engine's 8->16 kHz streaming
    resampler in 20 ms pieces -> Whisper base, English pinned."""
    from moksori.audio.g711 import ulaw_decode, ulaw_encode
    from moksori.audio.resample import StreamResampler
    from moksori.providers.base import STTOptions
    from moksori.providers.registry import build_stt
    from moksori.settings import load_settings

    stt = build_stt(load_settings(data_dir=data_dir, language="en"))
    total_err = total_words = 0
    rows = []
    for i in range(1, 21):
        u = utt(f"tel_{i:03d}")
        if not u.transcript or u.language != "en":
            continue
        pcm = load_audio(u.path_8k).samples
        line = ulaw_decode(ulaw_encode(pcm))
        rs = StreamResampler(8000, 16000)
        pieces = [rs.process(line[k:k + 160]) for k in range(0, len(line), 160)] + [rs.flush()]
        audio = np.concatenate(pieces).astype(np.float32) / 32768.0
        hyp = stt.transcribe_array(audio, STTOptions(language="en")).text
        err, n = word_errors(u.transcript, hyp)
        total_err += err
        total_words += n
        rows.append((u.name, err, n, hyp))
    wer = total_err / total_words
    print(f"\n8 kHz μ-law WER {100 * wer:.1f}% over {len(rows)} files ({total_words} words)")
    for name, err, n, hyp in rows:
        if err:
            print(f"  {name}: {err}/{n}  {hyp}")
    assert len(rows) == 16
    assert wer < 0.15


def test_debug_endpoints_are_off_by_default(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from moksori.server.app import create_app
    from moksori.settings import Settings

    class _Stub:
        name = "stub"
        kind = "stub"
        caps = None

        def describe(self):  # pragma: no cover - not called
            return {}

    from moksori.providers.registry import Stack

    stack = Stack(vad=_Stub(), stt=_Stub(), llm=_Stub(), tts=_Stub())  # type: ignore[arg-type]
    app = create_app(Settings(), stack)
    client = TestClient(app)
    assert client.get("/telephony/debug/calls").status_code == 404
    assert client.get("/telephony/debug/stats").status_code == 404
    # no auth token / public URL configured: the webhook refuses, with no TwiML
    r = client.post("/telephony/twilio/voice", data={"CallSid": "CA1"})
    assert r.status_code == 503 and "<Response" not in r.text
