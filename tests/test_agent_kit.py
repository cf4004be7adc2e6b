"""Tools, guardrails, backchannels and noise suppression wired into live sessions (issue 12).

Real components: Whisper, Silero, smart-turn and Piper on real recorded speech; the `mcp`
SDK's own server (tests/mcp_test_server.py) over stdio and Streamable HTTP on loopback; HTTP
tools on a Starlette app on loopback; the packaged DeepFilterNet3. The packaged SmolLM2 cannot
pick tools reliably, so the LLM is the scripted OpenAI-compatible server on loopback
(tests/scripted_llm_server.py), standing in for a smart model: it calls the tool the
instructions name (`scripted:tool=NAME`) or says what they give (`scripted:reply=TEXT`).

Tool and guardrail turns run in real time (the LLM is an HTTP server); the backchannel and
noise tests, which need no reply, run in virtual time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moksori.agent_kit import AgentKit
from moksori.audio.frames import Frame, concat
from moksori.audio.wav import load_audio
from moksori.brains import open_session
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.server.metrics import Metrics
from moksori.settings import load_settings
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual
from scripted_llm_server import ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import SPEECH, prepared_data_dir

pytestmark = pytest.mark.models

HERE = Path(__file__).resolve().parent
MCP_SERVER = str(HERE / "mcp_test_server.py")
ENV = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def speech(name: str, rate: int = 16000) -> Frame:
    return load_audio(SPEECH / name, rate=rate)


def silence(seconds: float, rate: int = 16000) -> Frame:
    return Frame.silence(seconds, rate)


# --------------------------------------------------------------------------- servers and models


class Backend:
    """HTTP tools: a weather lookup, a slow one, a broken one, one that answers with PII."""

    def __init__(self) -> None:
        self.app = Starlette(routes=[
            Route("/weather", self.weather, methods=["POST"]),
            Route("/slow", self.slow, methods=["POST"]),
            Route("/broken", self.broken, methods=["POST"]),
            Route("/contact", self.contact, methods=["POST"]),
        ])

    async def weather(self, request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"city": body.get("city"), "forecast": "sunny", "celsius": 21})

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(2.0)
        return JSONResponse({"answer": "forty two"})

    async def broken(self, request: Request) -> Response:
        return JSONResponse({"error": {"message": "backend database is down"}}, status_code=503)

    async def contact(self, request: Request) -> Response:
        return JSONResponse({"phone": "010-1234-5678", "email": "kim@example.com"})


@pytest.fixture(scope="module")
def scripted():
    llm = ScriptedLLM(token_delay_s=0.005)
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"  # type: ignore[attr-defined]
        yield llm


@pytest.fixture(scope="module")
def backend():
    with ThreadedASGIServer(Backend().app) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def mcp_http():
    port = free_port()
    srv = ServerProcess([sys.executable, MCP_SERVER, "http", str(port)], port=port, ready_path="/health", env=ENV,
                        ready_timeout_s=60)
    with srv:
        yield srv.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, scripted):
    from moksori.providers.registry import build_stack

    settings = load_settings(data_dir=prepared_data_dir(tmp_path_factory), language="en",
                             llm={"provider": "openai", "base_url": scripted.url, "model": "scripted"})
    return build_stack(settings)


class SpyTTS:
    """The stack's real TTS, remembering every text it was asked to speak."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def synthesize(self, text: str, opts: Any) -> Any:
        self.texts.append(text)
        return self.inner.synthesize(text, opts)


class Rec(Recording):
    """A recording that also keeps the stream events (audio chunks, text deltas)."""

    def __init__(self, rate: int) -> None:
        super().__init__(rate)
        self.stream: list[E.Event] = []

    def __call__(self, ev: E.Event) -> None:
        super().__call__(ev)
        if not ev.timeline:
            self.stream.append(ev)

    def streamed(self, kind: type) -> list[Any]:
        return [e for e in self.stream if isinstance(e, kind)]


def kit_settings(**groups: Any) -> Any:
    groups.setdefault("tools", {"builtins": []})
    return load_settings(language="en", **groups)


async def spoken_turn(stack: Any, kit: AgentKit, instructions: str, *, clip: str = "en/en_002.wav",
                      tail_s: float = 15.0, metrics: Metrics | None = None) -> tuple[Rec, Any]:
    """One real spoken turn into a session opened as the entry points open theirs."""
    from moksori.providers.registry import build_llm

    settings = kit_settings()
    cfg = config_from_settings(settings, output_rate=16000, output_lead_ms=0, partial_interval_ms=0,
                               instructions=instructions)
    # a fresh HTTP client for this test's event loop (a server has one loop; each test its own)
    stack = replace(stack, llm=build_llm(stack.settings))
    session = open_session(stack, cfg, settings=settings, kit=kit)
    if metrics is not None:
        session.bus.listen(metrics.observe_session())
    rec = Rec(cfg.output_rate)
    session.bus.listen(rec)
    await play_into_session(session, [speech(clip), silence(1.0)], recording=rec)
    waited = 0.0
    while waited < tail_s and (session.busy() or not rec.of(E.AgentResponseDone)):
        await play_into_session(session, silence(0.5), recording=rec)
        waited += 0.5
    await settle(session, 10)
    await session.close()
    return rec, session


def replies(rec: Recording) -> list[E.AgentResponseDone]:
    return [d for d in rec.of(E.AgentResponseDone) if d.in_conversation]


# --------------------------------------------------------------------------- tools in a spoken turn


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_mcp_tool_is_called_during_a_spoken_turn(stack, scripted, transport, request) -> None:
    if transport == "stdio":
        entry = {"name": "wx", "command": sys.executable, "args": [MCP_SERVER, "stdio"], "env": ENV,
                 "allowed_tools": ["weather"], "timeout_s": 10}
    else:
        entry = {"name": "wx", "url": request.getfixturevalue("mcp_http") + "/mcp", "allowed_tools": ["weather"]}

    async def main():
        kit = await AgentKit.build(kit_settings(tools={"builtins": [], "mcp": [entry]}))
        try:
            assert "weather" in kit.tools.names()
            return await spoken_turn(stack, kit, "scripted:tool=weather")
        finally:
            await kit.close()

    rec, session = asyncio.run(main())
    calls, results = rec.of(E.AgentToolCall), rec.of(E.AgentToolResult)
    assert [c.name for c in calls] == ["weather"] and json.loads(calls[0].arguments) == {"city": "Seoul"}
    assert results[0].ok and "sunny, 21 degrees" in results[0].output
    done = replies(rec)
    assert done and done[-1].status == "completed" and "sunny, 21 degrees" in done[-1].text
    assert rec.of(E.AgentAudioStarted), "the answer about the tool's result is spoken"
    # a `[[tools.mcp]]` server's call is one `mcp_call` item under its server's name (as the store keeps it)
    kinds = [(i.type, i.name, i.server_label) for i in session.memory.items if i.type != "message"]
    assert kinds == [("mcp_call", "weather", "wx")]
    assert calls[0].server_label == "wx"
    assert calls[0].mcp_item_id in {i.id for i in session.memory.items if i.type == "mcp_call"}
    assert rec.of(E.UserTranscript)[0].text.strip(), "the turn was real speech, transcribed"


def test_an_http_tool_on_loopback(stack, scripted, backend) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    settings = kit_settings(tools={"builtins": [], "http": [
        {"name": "get_weather", "url": f"{backend}/weather", "parameters": schema, "description": "Weather"}]})

    async def main():
        kit = await AgentKit.build(settings)
        try:
            return await spoken_turn(stack, kit, "scripted:tool=get_weather")
        finally:
            await kit.close()

    rec, _ = asyncio.run(main())
    result = rec.of(E.AgentToolResult)[0]
    assert result.ok and json.loads(result.output)["forecast"] == "sunny"
    assert "sunny" in replies(rec)[-1].text


def test_a_slow_tool_gets_a_spoken_filler_then_the_answer(stack, scripted, backend) -> None:
    settings = kit_settings(tools={"builtins": [], "slow_after_s": 0.5, "http": [
        {"name": "slow_lookup", "url": f"{backend}/slow", "timeout_s": 10}]})

    async def main():
        kit = await AgentKit.build(settings)
        try:
            return await spoken_turn(stack, kit, "scripted:tool=slow_lookup", tail_s=10)
        finally:
            await kit.close()

    rec, _ = asyncio.run(main())
    filler = rec.of(E.AgentToolFiller)
    result = rec.of(E.AgentToolResult)[0]
    assert len(filler) == 1 and filler[0].t < result.t
    assert result.t - rec.of(E.AgentToolCall)[0].t >= 1.5  # it really was slow
    text = replies(rec)[-1].text
    assert text.startswith(filler[0].text) and "forty two" in text
    # the filler was heard while the tool ran, not after
    first_audio = rec.of(E.AgentAudioStarted)[0]
    assert first_audio.t < result.t


@pytest.mark.parametrize("name,url_path,timeout_s,kind", [
    ("broken_lookup", "/broken", 5.0, None),
    ("late_lookup", "/slow", 0.5, "timeout"),
])
def test_a_failing_tool_gets_a_spoken_apology_and_the_turn_ends(stack, scripted, backend, name, url_path,
                                                                timeout_s, kind) -> None:
    settings = kit_settings(tools={"builtins": [], "slow_after_s": 5, "http": [
        {"name": name, "url": f"{backend}{url_path}", "timeout_s": timeout_s}]})

    async def main():
        kit = await AgentKit.build(settings)
        try:
            before = len(scripted.requests)
            rec, session = await spoken_turn(stack, kit, f"scripted:tool={name}")
            return rec, session, len(scripted.requests) - before
        finally:
            await kit.close()

    rec, session, llm_calls = asyncio.run(main())
    result = rec.of(E.AgentToolResult)[0]
    assert not result.ok and "error" in json.loads(result.output)
    if kind:
        assert result.error_kind == kind
    done = replies(rec)[-1]
    assert done.status == "completed" and done.text.strip() == "Sorry, I couldn't get that information right now."
    assert rec.of(E.AgentAudioStarted), "the apology is spoken"
    assert llm_calls == 1, "no second LLM pass after a failed tool: the apology is the reply"
    assert session.state == "idle"


# --------------------------------------------------------------------------- guardrails


def test_blocked_input_never_reaches_the_llm(stack, scripted) -> None:
    # en_002: "he was not an ill disposed young man"
    settings = kit_settings(guardrails={"block_terms_en": ["young man"], "safe_reply_en": "Let us talk about something else."})
    metrics = Metrics()

    async def main():
        kit = await AgentKit.build(settings)
        try:
            before = len(scripted.requests)
            rec, session = await spoken_turn(stack, kit, "scripted:reply=I should not be asked.", metrics=metrics)
            return rec, session, len(scripted.requests) - before
        finally:
            await kit.close()

    rec, session, llm_calls = asyncio.run(main())
    assert "young man" in rec.of(E.UserTranscript)[0].text.lower()
    trips = rec.of(E.GuardrailTripped)
    assert [(t.stage, t.action, t.policy) for t in trips] == [("input", "block", "terms")]
    assert "young" not in trips[0].reason
    assert llm_calls == 0
    assert replies(rec)[-1].text == "Let us talk about something else."
    assert 'moksori_guardrail_trips_total{stage="input",action="block",policy="terms"} 1' in metrics.render(sessions=0)


def test_blocked_output_is_never_synthesised_or_shown(stack, scripted) -> None:
    settings = kit_settings(guardrails={"block_terms_en": ["banana"], "safe_reply_en": "Sorry, I can't help with that."})
    spy = SpyTTS(stack.tts)
    spied = replace(stack, tts=spy)
    metrics = Metrics()

    async def main():
        kit = await AgentKit.build(settings)
        try:
            return await spoken_turn(spied, kit, "scripted:reply=Hello there. The secret code is banana split. "
                                                  "Have a nice day.", metrics=metrics)
        finally:
            await kit.close()

    rec, session = asyncio.run(main())
    trips = rec.of(E.GuardrailTripped)
    assert [(t.stage, t.action, t.policy) for t in trips] == [("output", "block", "terms")]
    assert spy.texts and not any("banana" in t.lower() for t in spy.texts), spy.texts
    assert any("can't help" in t for t in spy.texts), "the safe sentence is spoken instead"
    deltas = "".join(d.delta for d in rec.streamed(E.AgentTextDelta))
    done = replies(rec)[-1]
    assert "banana" not in deltas and "banana" not in done.text and "banana" not in done.generated_text
    assert done.text.startswith("Hello there.") and "Sorry, I can't help with that." in done.text
    assert "Have a nice day" not in done.text, "nothing after the blocked clause"
    assert all("banana" not in i.text for i in session.memory.items)
    assert 'moksori_guardrail_trips_total{stage="output",action="block",policy="terms"} 1' in metrics.render(sessions=0)


def test_pii_is_masked_in_the_logs(stack, scripted, backend) -> None:
    settings = kit_settings(tools={"builtins": [], "http": [{"name": "contact", "url": f"{backend}/contact"}]})
    lines: list[str] = []
    raw_lines: list[str] = []

    class Keep(logging.Handler):
        def __init__(self, into: list[str]) -> None:
            super().__init__(logging.DEBUG)
            self.into = into

        def emit(self, record: logging.LogRecord) -> None:
            self.into.append(record.getMessage())

    guarded, control = Keep(lines), Keep(raw_lines)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(guarded)
    root.setLevel(logging.DEBUG)

    async def main():
        kit = await AgentKit.build(settings)
        kit.install_log_filter()
        # the session's own logger: its handlers see a record before the root's filtered ones
        logging.getLogger("moksori.session").addHandler(control)
        try:
            return await spoken_turn(stack, kit, "scripted:tool=contact")
        finally:
            await kit.close()

    try:
        rec, _ = asyncio.run(main())
    finally:
        root.removeHandler(guarded)
        logging.getLogger("moksori.session").removeHandler(control)
        root.setLevel(old_level)
    assert "010-1234-5678" in rec.of(E.AgentToolResult)[0].output  # the tool's answer reached the LLM
    assert any("010-1234-5678" in m for m in raw_lines), "the control handler saw the number: the test can fail"
    logged = "\n".join(lines)
    assert "[PHONE]" in logged and "[EMAIL]" in logged
    assert "010-1234-5678" not in logged and "kim@example.com" not in logged


# --------------------------------------------------------------------------- backchannels (virtual time)


def _with_pause(frame: Frame, pause_s: float, at_s: float) -> Frame:
    """Insert a pause at the quietest 50 ms within 0.12 s of `at_s` (a word boundary)."""
    x = frame.samples.astype(np.float32)
    win = frame.rate // 20
    lo, hi = int((at_s - 0.12) * frame.rate), int((at_s + 0.12) * frame.rate)
    energies = [float(np.mean(x[i:i + win] ** 2)) for i in range(lo, hi - win, win // 2)]
    cut = lo + int(np.argmin(energies)) * (win // 2) + win // 2
    return concat([Frame(frame.samples[:cut], frame.rate), Frame.silence(pause_s, frame.rate),
                   Frame(frame.samples[cut:], frame.rate)])


def _virtual_session(stack: Any, kit: AgentKit, audio: list[Frame], *, real_time: bool = False,
                     **cfg: Any) -> tuple[Rec, Any]:
    settings = kit_settings()
    config = config_from_settings(settings, output_rate=16000, output_lead_ms=0, partial_interval_ms=0, **cfg)
    config = config.with_(turn=replace(config.turn, create_response=False))  # no reply needed: no LLM

    async def main():
        session = open_session(stack, config, settings=settings, kit=kit)
        rec = Rec(config.output_rate)
        session.bus.listen(rec)
        await play_into_session(session, audio, recording=rec)
        await session.drain_input()
        await play_into_session(session, silence(2.0, audio[0].rate), recording=rec)
        await settle(session, 10)
        await session.close()
        return rec, session

    return asyncio.run(main()) if real_time else run_virtual(main())


def test_a_backchannel_in_a_long_mid_sentence_pause_does_not_end_the_turn(stack) -> None:
    # en_003: "unless to be rather cold hearted and | rather selfish is to be ill disposed", with a
    # 1.2 s pause after "and" (2.36 s into the clip by Whisper's word times)
    utterance = _with_pause(speech("en/en_003.wav"), 1.2, at_s=2.36)
    kit = AgentKit(backchannel_on=True, backchannel_after_ms=700)
    rec, session = _virtual_session(stack, kit, [silence(0.5), utterance], backchannel=True)
    bcs = rec.of(E.AgentBackchannel)
    ended = rec.of(E.UserTurnEnded)
    assert len(ended) == 1, "the pauses did not end the turn"
    assert len(bcs) == 1, [e.to_json() for e in rec.events if e.type.startswith(("user.", "eot."))]
    assert 2.9 < bcs[0].t - 0.5 < 3.6  # in the pause (about 2.36-3.56 s of the clip)
    bc = bcs[0]
    assert bc.text in ("Mm-hmm.", "Uh-huh.", "Right.") and bc.language == "en"
    audio = [e for e in rec.streamed(E.AgentAudio) if e.response_id == bc.response_id]
    assert audio, "the acknowledgment was played"
    resumed = [e for e in rec.events if e.t > bc.t and e.type == "session.state" and e.state == "user_speaking"]
    assert resumed and audio[-1].t <= resumed[0].t + 0.1, "it is never played over the user"
    assert audio[0].t < ended[0].t
    assert not any(i.role == "assistant" for i in session.memory.items), "never in the history"
    assert [i.role for i in session.memory.items] == ["user"]
    assert not rec.of(E.AgentInterrupted), "the user going on is not a barge-in"


def test_no_backchannel_when_off_or_for_a_finished_sentence(stack) -> None:
    kit = AgentKit(backchannel_on=True)
    off, _ = _virtual_session(stack, kit, [silence(0.5), _with_pause(speech("en/en_003.wav"), 1.2, at_s=2.36)])
    assert not off.of(E.AgentBackchannel)
    done, _ = _virtual_session(stack, kit, [silence(0.5), speech("en/en_002.wav")], backchannel=True)
    assert not done.of(E.AgentBackchannel), "a finished sentence gets a reply, not a mm-hmm"


# --------------------------------------------------------------------------- noise suppression


def _noisy(frame: Frame, snr_db: float, seed: int = 7) -> Frame:
    x = frame.samples.astype(np.float32)
    voiced = x[np.abs(x) > 0.05 * np.abs(x).max()]
    p_speech = float(np.mean(voiced ** 2))
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    noise *= np.sqrt(p_speech / 10 ** (snr_db / 10))
    return Frame(np.clip(x + noise, -32768, 32767).astype(np.int16), frame.rate)


def _words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


@pytest.mark.parametrize("clip,rate", [("en/en_003.wav", 16000), ("tel/8k/tel_001.wav", 8000)])
def test_noise_suppression_on_noisy_real_speech_in_a_session(stack, clip, rate) -> None:
    noisy = _noisy(speech(clip, rate), snr_db=5)
    kit = AgentKit()
    rec, session = _virtual_session(stack, kit, [silence(0.5, rate), noisy, silence(0.5, rate)],
                                    noise_reduction="near_field")
    nr = [e for e in session.bus.history if isinstance(e, E.SessionNoiseReduction)]  # said as it opened
    assert nr and nr[0].mode == "near_field" and nr[0].model == "deepfilternet3"
    assert not rec.of(E.SessionWarning)
    assert session._noise.input is not None and session._noise.input.frames_denoised > 50
    text = rec.of(E.UserTranscript)[0].text
    assert len(rec.of(E.UserTurnEnded)) == 1 and text.strip(), text
    if clip.startswith("en/"):  # "unless to be rather cold hearted and rather selfish is to be ill disposed"
        ref = _words("unless to be rather cold hearted and rather selfish is to be ill disposed")
        assert len(_words(text) & ref) >= len(ref) // 2, text


def test_noise_suppression_unavailable_is_a_warning_not_a_failure(stack, tmp_path) -> None:
    kit = AgentKit(noise_model=str(tmp_path / "missing.tar.gz"))
    rec, session = _virtual_session(stack, kit, [silence(0.5), speech("en/en_002.wav")],
                                    noise_reduction="far_field")
    warn = [e for e in session.bus.history if isinstance(e, E.SessionWarning)]
    assert warn and warn[0].code == "noise_reduction_unavailable" and "unavailable" in warn[0].message
    assert rec.of(E.UserTranscript)[0].text.strip(), "the audio went on as it came"


def test_a_backchannel_in_real_time(stack) -> None:
    """The same pause on the real event-loop clock (models take their real time)."""
    utterance = _with_pause(speech("en/en_003.wav"), 1.2, at_s=2.36)
    kit = AgentKit(backchannel_on=True, backchannel_after_ms=700)
    rec, session = _virtual_session(stack, kit, [silence(0.5), utterance], backchannel=True, real_time=True)
    assert len(rec.of(E.UserTurnEnded)) == 1
    bcs = rec.of(E.AgentBackchannel)
    assert len(bcs) == 1 and [e for e in rec.streamed(E.AgentAudio) if e.response_id == bcs[0].response_id]
    assert not any(i.role == "assistant" for i in session.memory.items)


# --------------------------------------------------------------------------- the Realtime API


def _realtime(stack: Any, kit: AgentKit | None, settings: Any) -> tuple[Any, list[dict[str, Any]]]:
    from moksori.protocols import realtime as rt
    from moksori.server.realtime_conn import RealtimeConnection

    sent: list[dict[str, Any]] = []

    async def send(ev: dict[str, Any]) -> None:
        sent.append(ev)

    return RealtimeConnection(stack, settings, rt.Flavor.GA, send, kit=kit), sent


def test_realtime_session_update_turns_noise_reduction_on_and_off(stack) -> None:
    settings = load_settings(language="en")

    def update(nr: Any) -> str:
        return json.dumps({"type": "session.update", "session": {"type": "realtime",
                                                                  "audio": {"input": {"noise_reduction": nr}}}})

    async def main():
        conn, sent = _realtime(stack, AgentKit(), settings)
        await conn.start()
        await conn.on_message(update({"type": "near_field"}))
        on = conn.session._noise.mode
        await conn.on_message(update(None))
        off = conn.session._noise.mode
        bare, bare_sent = _realtime(stack, None, settings)  # a server without the kit: a warning, not silence
        await bare.start()
        await bare.on_message(update({"type": "far_field"}))
        await asyncio.sleep(0.05)
        await conn.close()
        await bare.close()
        return on, off, sent, bare_sent

    on, off, sent, bare_sent = asyncio.run(main())
    assert (on, off) == ("near_field", "off")
    assert not [e for e in sent if e["type"] == "error"]
    warned = [e for e in bare_sent if e["type"] == "error" and "noise reduction" in e["error"]["message"]]
    assert warned and "far_field" in warned[0]["error"]["message"]


def test_realtime_clients_get_a_backchannel_out_of_band_only_when_on(stack) -> None:
    utterance = _with_pause(speech("en/en_003.wav", 24000), 1.2, at_s=2.36)

    def run(backchannel: str) -> list[dict[str, Any]]:
        settings = load_settings(language="en", turn={"backchannel": backchannel, "create_response": False})
        kit = AgentKit(backchannel_on=backchannel == "on")

        async def main():
            conn, sent = _realtime(stack, kit, settings)
            await conn.start()
            samples = np.concatenate([np.zeros(12000, np.int16), utterance.samples, np.zeros(48000, np.int16)])
            for i in range(0, len(samples), 480):
                conn.push_audio(Frame(samples[i:i + 480], 24000))
                await asyncio.sleep(0.02)
            await settle(conn.session, 10)
            await asyncio.sleep(0.1)
            await conn.close()
            return sent

        return run_virtual(main())

    sent = run("on")
    created = [e["response"] for e in sent if e["type"] == "response.created"]
    assert len(created) == 1 and created[0]["conversation_id"] is None
    assert created[0]["metadata"] == {"moksori": "backchannel"}
    rid = created[0]["id"]
    assert [e for e in sent if e["type"] == "response.output_audio.delta" and e["response_id"] == rid]
    assert not [e for e in sent if e["type"] == "conversation.item.added" and e["item"]["role"] == "assistant"]
    assert len([e for e in sent if e["type"] == "input_audio_buffer.committed"]) == 1
    assert not [e for e in run("off") if e["type"] == "response.created"]
