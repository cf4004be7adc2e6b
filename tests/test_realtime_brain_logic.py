"""The realtime brain through the engine, in virtual time: turn-taking both ways, barge-in and
truncation, transcripts in their place, usage, tools, rejected truncates, drops and reconnects,
and a 20-minute conversation across forced reconnects.

The upstream is `moksori.testing.fake_realtime` (an in-memory scripted GA server, a stand-in: it
"transcribes" from a script and answers with a tone), the local models are the scripted fakes of
`moksori.testing.fakes`. The same brain against a real `moksori serve` upstream, through a fault
proxy, driven by the openai client, the Twilio simulator and the browser, is in
`test_realtime_brain.py`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from moksori.brains import brain_config, open_session
from moksori.brains.realtime import ReconnectPolicy, SessionOptions, Timeouts, UpstreamOptions, resolve_endpoint
from moksori.brains.realtime.providers import RealtimeLLM
from moksori.brains.realtime.reply import estimated_samples
from moksori.brains.realtime.session import RealtimeSession
from moksori.engine import events as E
from moksori.engine.config import SessionConfig, config_from_settings
from moksori.engine.memory import Item
from moksori.engine.session import Session
from moksori.engine.tools import Tool, ToolBox
from moksori.engine.turns import TurnConfig
from moksori.errors import ConfigError, ProviderError
from moksori.providers.base import ChatRequest, Message, TextDelta, ToolSpec, Usage
from moksori.settings import load_settings
from moksori.testing.fake_realtime import FakeRealtimeServer
from moksori.testing.fakes import ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual
from moksori.tools.results import FAILURE_APOLOGIES, SLOW_FILLERS

R = 24000
EP = resolve_endpoint("ws://fake.test/v1/realtime?model=gpt-realtime", api_key="sk-test")


def make(server: FakeRealtimeServer, *, who: str = "upstream", mode: str = "silence", stt=None,
         toolbox: ToolBox | None = None, rotate_after_s: float | None = None, output_rate: int = R,
         transcription: str | None = None, input_rate: int | None = None, guard=None,
         tool_slow_after_s: float | None = None, language: str = "auto") -> RealtimeSession:
    cfg = SessionConfig(output_rate=output_rate, partial_interval_ms=0, language=language,  # type: ignore[arg-type]
                        turn=TurnConfig(mode=mode, silence_duration_ms=500))  # type: ignore[arg-type]
    opts = UpstreamOptions(EP, SessionOptions(transcription_model=transcription),
                           timeouts=Timeouts(keepalive_s=None, idle_s=5, response_s=5),
                           reconnect=ReconnectPolicy(rotate_after_s=rotate_after_s))
    return RealtimeSession(fake_stack(stt=stt or ScriptedSTT(["hello there."])), cfg, upstream=opts, who=who,  # type: ignore[arg-type]
                           toolbox=toolbox, connector=server.connector, input_rate=input_rate, guard=guard,
                           tool_slow_after_s=tool_slow_after_s)


def two_spoken_turns() -> list:
    """A 1 s turn, then a 0.6 s one, each followed by 4 s of quiet."""
    return [quiet(2.0, rate=R), tone(1.0, rate=R), quiet(4.0, rate=R), tone(0.6, rate=R), quiet(4.0, rate=R)]


def sent(server: FakeRealtimeServer, kind: str) -> list[dict]:
    return [e for sess in server.sessions for e in sess.received if e["type"] == kind]


def done(rec: Recording, status: str | None = None) -> list[E.AgentResponseDone]:
    return [e for e in rec.of(E.AgentResponseDone) if status is None or e.status == status]


# --------------------------------------------------------------------------- the upstream's VAD


def test_upstream_turns_become_engine_turns_with_transcripts_in_place_and_usage():
    # the transcript comes 0.8 s after the commit: after the reply has started playing
    server = FakeRealtimeServer(reply_ms=1500, transcript_delay_s=0.8)
    server.transcripts.extend(["hello there", "how are you"])

    async def main():
        s = make(server)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(3.0, rate=R),
                                          tone(0.8, rate=R), quiet(4.0, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    assert [e.turn_id for e in rec.of(E.UserTurnEnded)] == [1, 2]
    assert all(e.reason == "upstream_vad" for e in rec.of(E.UserTurnEnded))
    assert len(done(rec, "completed")) == 2
    # memory: user before the reply to it, although its words arrived after the reply started
    assert [(i.role, i.text) for i in s.memory.items][0::2] == [("user", "hello there"), ("user", "how are you")]
    assert [i.role for i in s.memory.items] == ["user", "assistant"] * 2
    types = rec.types()
    for turn in (1, 2):
        tr = next(e for e in rec.of(E.UserTranscript) if e.turn_id == turn)
        reply_done = next(e for e in done(rec) if e.turn_id == turn)
        started = next(e for e in rec.of(E.AgentAudioStarted) if e.response_id == reply_done.response_id)
        assert started.t < tr.t < reply_done.t  # late words, still recorded before the reply ends
        assert types.index("user.transcript", types.index("user.turn_ended")) < types.index("agent.response_done")
    # the upstream's usage: text, audio and cached tokens, its model
    u = done(rec)[0].upstream_usage
    assert u is not None and u.llm_model == "gpt-realtime"
    assert u.input_audio_tokens == 50 and u.output_audio_tokens == 30 and u.cached_tokens == 8
    assert done(rec)[0].usage.input_tokens == u.input_tokens
    # the speaker played the upstream's audio (1.5 s each), on the session's clock
    assert all(d.samples == int(1.5 * R) for d in rec.of(E.AgentAudioDone))
    assert [e.state for e in rec.of(E.SessionState)][:3] == ["user_speaking", "user_paused", "thinking"]


def test_barge_in_stops_playback_at_once_cancels_and_truncates_at_what_was_heard():
    server = FakeRealtimeServer(reply_ms=4000)
    server.transcripts.extend(["tell me a story", "stop"])

    async def main():
        s = make(server)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(2.5, rate=R),
                                          tone(0.8, rate=R), quiet(5.0, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    started = rec.of(E.UserSpeechStarted)[1]
    cleared = rec.of(E.AgentAudioCleared)[0]
    assert cleared.t - started.t < 0.05  # the local speaker stops as soon as the upstream says so
    cut = rec.of(E.AgentInterrupted)[0]
    assert cut.reason == "turn_detected" and 1500 < cut.heard_ms < 2600
    assert sent(server, "response.cancel")
    (item, ms), = server.sessions[0].truncates
    assert ms == cut.heard_ms <= 4000  # what was heard, never past what was generated
    first_reply = done(rec)[0]
    assert first_reply.status == "cancelled" and first_reply.interrupted
    assert first_reply.upstream_usage is not None  # held back until the upstream counted the cut reply
    heard = [i for i in s.memory.items if i.role == "assistant"][0]
    assert heard.truncated_at_ms == cut.heard_ms and heard.text == cut.text
    assert len(heard.text.split()) < len(first_reply.generated_text.split())
    assert done(rec)[1].status == "completed"  # and the conversation goes on


# --------------------------------------------------------------------------- Moksori's own turn-taking


def test_moksori_turns_send_only_speech_and_commit_at_the_turn_end():
    server = FakeRealtimeServer(reply_ms=1000)
    server.transcripts.extend(["what time is it", "thanks"])

    async def main():
        s = make(server, who="moksori", stt=ScriptedSTT(["what time is it?", "thanks."]))
        await s.ready(5)
        rec = await play_into_session(s, two_spoken_turns())
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    sess = server.sessions[0]
    assert sess.session["audio"]["input"]["turn_detection"] is None  # the upstream's VAD is off
    kinds = [e["type"] for e in sess.received if e["type"] != "input_audio_buffer.append"]
    assert kinds == ["session.update", "input_audio_buffer.commit", "response.create",
                     "input_audio_buffer.commit", "response.create"]
    # only the turns went up (speech + prefix padding + the end-of-turn silence), not 11.6 s of audio
    assert 2000 < sess.audio_ms < 4500
    ended = rec.of(E.UserTurnEnded)
    assert [e.reason for e in ended] == ["silence", "silence"]
    assert [e.text for e in rec.of(E.UserTranscript)] == ["what time is it", "thanks"]  # the upstream's words
    assert [i.role for i in s.memory.items] == ["user", "assistant", "user", "assistant"]
    # the reply starts at the turn's end, never before (no speculative reply upstream)
    for end, resp in zip(ended, rec.of(E.AgentResponseStarted)):
        assert resp.t >= end.t


def test_moksori_turns_a_noise_with_no_words_is_not_sent_as_a_turn():
    server = FakeRealtimeServer(reply_ms=800)

    async def main():
        s = make(server, who="moksori", stt=ScriptedSTT([""]))
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(0.5, rate=R), quiet(3.0, rate=R)])
        await settle(s, 5)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    assert sent(server, "input_audio_buffer.clear") and not sent(server, "input_audio_buffer.commit")
    assert not sent(server, "response.create") and not rec.of(E.AgentResponseStarted)
    assert [e.text for e in rec.of(E.UserTranscript)] == [""]


def test_a_transcript_that_never_comes_falls_back_to_the_local_words_in_time():
    server = FakeRealtimeServer(reply_ms=600, transcript_delay_s=30)  # far too late
    server.transcripts.append("upstream words")

    async def main():
        s = make(server, who="moksori", stt=ScriptedSTT(["local words."]))
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(12.0, rate=R)])
        await settle(s, 5)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    tr, = rec.of(E.UserTranscript)
    ended = rec.of(E.UserTurnEnded)[0]
    assert tr.text == "local words." and 7.9 < tr.t - ended.t < 8.5  # after the 8 s wait, not never
    reply = done(rec)[0]
    assert reply.status == "completed" and reply.t >= tr.t  # the reply's record waits for the turn's
    assert s.memory.items[0].text == "local words."


def test_without_upstream_transcription_the_turn_has_no_words_at_once():
    server = FakeRealtimeServer(reply_ms=600)

    async def main():
        s = make(server, transcription="")
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(3.0, rate=R)])
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    assert server.sessions[0].session["audio"]["input"]["transcription"] is None
    tr, = rec.of(E.UserTranscript)
    assert tr.text == "" and tr.t == rec.of(E.UserTurnEnded)[0].t
    assert done(rec, "completed")


def test_manual_turns_commit_upstream_when_the_client_commits():
    server = FakeRealtimeServer(reply_ms=600)
    server.transcripts.append("typed by voice")

    async def main():
        s = make(server, mode="manual")
        await s.ready(5)
        rec = await play_into_session(s, [tone(1.0, rate=R)])
        item_id = s.commit()
        s.create_response()
        await play_into_session(s, quiet(3.0, rate=R), recording=rec)
        await settle(s, 5)
        await s.close()
        return s, rec, item_id

    s, rec, item_id = run_virtual(main())
    assert sent(server, "input_audio_buffer.commit") and sent(server, "response.create")
    received = server.sessions[0].received
    before = received[:[e["type"] for e in received].index("input_audio_buffer.commit")]
    assert sum(e["type"] == "input_audio_buffer.append" for e in before) == 50  # the client's 1 s, then its commit
    assert server.sessions[0].audio_ms == pytest.approx(4000, abs=50)  # manual: every frame goes up
    assert s.memory.items[0].id == item_id and s.memory.items[0].text == "typed by voice"
    assert rec.of(E.UserTurnEnded)[0].reason == "commit" and done(rec, "completed")


# --------------------------------------------------------------------------- trouble


def test_a_rejected_truncate_is_survived_and_the_upstream_copy_repaired():
    server = FakeRealtimeServer(reply_ms=4000)
    server.transcripts.extend(["tell me a story", "stop", "and now?"])
    server.reject_truncates = 1

    async def main():
        s = make(server)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(2.5, rate=R),
                                          tone(0.8, rate=R), quiet(6.0, rate=R), tone(0.8, rate=R), quiet(6.0, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    rejected = rec.of(E.BrainTruncateRejected)
    assert len(rejected) == 1 and rejected[0].heard_ms == rec.of(E.AgentInterrupted)[0].heard_ms
    # the upstream holds the heard words in place of the whole reply, where it was
    texts = server.sessions[0].texts()
    heard = rec.of(E.AgentInterrupted)[0].text
    assert texts[1] == ("assistant", heard) and texts[0][0] == "user"
    assert sent(server, "conversation.item.delete")
    # and the session kept talking: both later turns answered
    assert len(done(rec, "completed")) == 2 and not rec.of(E.ErrorEvent)


def test_a_drop_mid_reply_reconnects_resumes_and_the_conversation_goes_on():
    server = FakeRealtimeServer(reply_ms=3000)
    server.transcripts.extend(["first question", "second question"])

    async def main():
        s = make(server)
        await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(1.5, rate=R)], recording=rec)
        server.drop()  # ~1 s into the reply
        await play_into_session(s, [quiet(8.0, rate=R), tone(0.8, rate=R), quiet(6.0, rate=R)], recording=rec)
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    dropped, = rec.of(E.BrainUpstreamDropped)
    assert dropped.in_response and not dropped.planned
    reconnected, = rec.of(E.BrainReconnected)
    assert reconnected.resumed and reconnected.reseeded >= 1 and reconnected.gap_s < 1.0
    cut = done(rec)[0]
    assert cut.status == "failed" and cut.reason == "upstream_lost"
    # the upstream was asked to resume (say it was cut off): a reply follows, then the next turn's
    resumed = [d for d in done(rec, "completed")]
    assert len(resumed) == 2 and resumed[0].turn_id == 1 and resumed[1].turn_id == 2
    assert "[" in resumed[0].generated_text  # the fake echoes the resume instructions it was given
    gap = rec.of(E.AgentAudioStarted)[1].t - dropped.t
    assert gap < 1.0  # what was heard of the cut reply, then at most a short silence
    roles = [i.role for i in s.memory.items]
    assert roles[0] == "user" and roles.count("user") == 2


def test_upstream_that_refuses_the_key_fails_fast_and_says_so():
    server = FakeRealtimeServer()
    server.refuse_next, server.refuse_status = 1, 401

    async def main():
        s = make(server)
        with pytest.raises(ProviderError):
            await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        s.create_response()  # nothing can answer: no hang
        await play_into_session(s, quiet(1.0, rate=R), recording=rec)
        await settle(s, 3)
        await s.close()
        return s, list(s.bus.history)

    s, history = run_virtual(main())
    failed = [e for e in history if isinstance(e, E.BrainUpstreamFailed)]
    assert failed and failed[0].reason == "connect_failed"
    assert any(isinstance(e, E.ErrorEvent) and e.code == "upstream_failed" for e in history)
    assert not s.busy()


def test_twenty_minutes_across_forced_reconnects_lose_no_turn():
    """40 turns over 20 minutes; the upstream ends every session after 5 minutes (as OpenAI does
    at its limit) and the brain also rotates at a quiet moment after 4 minutes."""
    server = FakeRealtimeServer(reply_ms=1500, chunk_ms=100, max_session_s=300)
    n = 40
    server.transcripts.extend(f"question number {i}" for i in range(1, n + 1))

    async def main():
        s = make(server, rotate_after_s=240)
        await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        for _ in range(n):
            await play_into_session(s, [tone(1.0, rate=R), quiet(29.0, rate=R)], chunk_ms=100, recording=rec)
        await settle(s, 10)
        await s.close()
        return s, rec

    t0 = time.perf_counter()
    s, rec = run_virtual(main())
    assert time.perf_counter() - t0 < 60
    assert len(rec.of(E.BrainUpstreamDropped)) >= 4 and len(rec.of(E.BrainReconnected)) >= 4
    assert not rec.of(E.BrainUpstreamFailed)
    answered = done(rec, "completed")
    assert [d.turn_id for d in answered] == list(range(1, n + 1))  # every turn, once, in order
    users = [i.text for i in s.memory.items if i.role == "user"]
    assert users == [f"question number {i}" for i in range(1, n + 1)]
    assert [i.role for i in s.memory.items] == ["user", "assistant"] * n
    # a re-seeded upstream knows the recent conversation
    last = server.sessions[-1]
    assert len(server.sessions) >= 5 and any(t == "question number 39" for _, t in last.texts())


# --------------------------------------------------------------------------- tools, text, greeting


def test_server_tool_runs_here_and_a_follow_up_continues_the_same_reply():
    server = FakeRealtimeServer(reply_ms=800)
    server.transcripts.append("what time is it")
    server.function_calls.append(("current_time", '{"zone": "Asia/Seoul"}'))
    calls = []

    async def handler(args):
        calls.append(args)
        return {"time": "10:30"}

    box = ToolBox([Tool(ToolSpec("current_time", "The time.", {"type": "object", "properties": {}}), handler)])

    async def main():
        s = make(server, toolbox=box)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.3, rate=R), tone(1.0, rate=R), quiet(4.0, rate=R)])
        await settle(s, 5)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    assert calls == [{"zone": "Asia/Seoul"}]
    tools = server.sessions[0].session["tools"]
    assert [t["name"] for t in tools] == ["current_time"]  # declared upstream
    out, = sent(server, "conversation.item.create")
    assert out["item"]["type"] == "function_call_output" and "10:30" in out["item"]["output"]
    assert len(sent(server, "response.create")) == 1  # the follow-up
    reply, = done(rec)
    assert reply.status == "completed" and reply.function_calls[0].name == "current_time"
    assert rec.of(E.AgentToolCall) and rec.of(E.AgentToolResult) and rec.of(E.AgentAudioDone)[0].samples > 0
    assert [i.type for i in s.memory.items] == ["message", "message", "function_call", "function_call_output"]


def test_an_mcp_servers_tool_is_one_mcp_call_item_and_a_late_listed_tool_is_offered_upstream():
    """A tool of an MCP server (`Tool.mcp_server`: a `[[tools.mcp]]` server's, or one a Realtime
    client named) runs as the pipeline runs it: `agent.tool_call` names the server and the
    `mcp_call` item's id, memory keeps one `mcp_call` item, the upstream gets the output. A tool
    that joins the box later (an MCP server listed after the session started) is offered upstream
    by a `session.update` (`tools_changed`)."""
    server = FakeRealtimeServer(reply_ms=800)
    server.transcripts.append("weather in seoul")
    server.function_calls.append(("weather", '{"city": "Seoul"}'))

    async def weather(args):
        return f"{args['city']}: sunny"

    async def failing(args):
        raise RuntimeError("down")

    spec = ToolSpec("weather", "Weather for a city.", {"type": "object", "properties": {"city": {"type": "string"}}})
    box = ToolBox()

    async def main():
        s = make(server, toolbox=box)
        await s.ready(5)
        box.add(Tool(spec, weather, mcp_server="wx"))  # listed once the session runs
        s.tools_changed()
        box.add(Tool(ToolSpec("broken", "Fails.", {"type": "object", "properties": {}}), failing, mcp_server="wx"))
        s.tools_changed()
        rec = await play_into_session(s, [quiet(0.3, rate=R), tone(1.0, rate=R), quiet(4.0, rate=R)])
        server.transcripts.append("and the other one")
        server.function_calls.append(("broken", "{}"))
        await play_into_session(s, [tone(1.0, rate=R), quiet(4.0, rate=R)], recording=rec)
        await settle(s, 5)
        kept = [i for i in s.memory.items if i.type == "mcp_call"]
        s.add_item(Item(id="item_client_after", role="user", text="thanks"))  # appended at the end upstream
        assert s.delete_item(rec.of(E.AgentToolCall)[0].mcp_item_id)  # the call and its output, upstream
        await play_into_session(s, quiet(0.5, rate=R), recording=rec)
        await s.close()
        return s, rec, kept

    s, rec, calls = run_virtual(main())
    added = next(e for e in sent(server, "conversation.item.create") if e["item"].get("id") == "item_client_after")
    outs_up = [e["item"]["id"] for e in sent(server, "conversation.item.create")
               if e["item"]["type"] == "function_call_output"]
    assert added.get("previous_item_id") is None  # at the end upstream too: after the call's output and the reply
    deleted = {e["item_id"] for e in sent(server, "conversation.item.delete")}
    left = [i for i in server.sessions[0].items if i.get("type") in ("function_call", "function_call_output")]
    assert len(deleted) == 2 and outs_up[0] in deleted  # the first call and its output are gone upstream
    assert len(left) == 2 and not deleted & {i["id"] for i in left}
    updates = sent(server, "session.update")
    assert [t["name"] for t in updates[-1]["session"]["tools"]] == ["weather", "broken"]
    first, second = rec.of(E.AgentToolCall)
    assert first.server_label == "wx" and first.mcp_item_id is not None and first.mcp_item_id.startswith("mcp")
    ok, failed = rec.of(E.AgentToolResult)
    assert ok.ok and ok.output == "Seoul: sunny" and not failed.ok and failed.error_kind == "failed"
    outs = [e["item"] for e in sent(server, "conversation.item.create") if e["item"]["type"] == "function_call_output"]
    assert [o["output"] for o in outs][0] == "Seoul: sunny" and "down" in outs[1]["output"]
    assert [i.type for i in calls] == ["mcp_call", "mcp_call"]  # no function_call items
    assert [i.type for i in s.memory.items if i.type != "message"] == ["mcp_call"]  # the first one deleted
    assert [i.id for i in calls] == [first.mcp_item_id, second.mcp_item_id]
    assert calls[0].server_label == "wx" and calls[0].name == "weather"
    assert calls[0].output == "Seoul: sunny" and calls[0].error is None and calls[1].error is not None
    assert [r.status for r in done(rec)] == ["completed", "completed"]


def _tool_turn(server: FakeRealtimeServer, *tools: Tool, language: str = "en", quiet_s: float = 8.0):
    """One spoken turn whose reply calls `tools` (all in one upstream response; slow-tool
    threshold 1.5 s, as the settings' default)."""
    server.transcripts.append("look it up")
    server.function_calls.append([(t.spec.name, "{}") for t in tools])

    async def main():
        s = make(server, toolbox=ToolBox(list(tools)), tool_slow_after_s=1.5, language=language)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.3, rate=R), tone(1.0, rate=R), quiet(quiet_s, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    return run_virtual(main())


def _upstream_calls(server: FakeRealtimeServer) -> list[dict]:
    """What went up after the user's turn: responses asked for and items added, in order."""
    return [e for e in server.sessions[0].received if e["type"] in ("response.create", "conversation.item.create")]


def test_a_slow_server_tool_gets_one_filler_out_of_band_then_its_output_and_the_reply():
    """As the pipeline: a tool slower than `tools.slow_after_s` gets a short filler in the
    session's language, once. Upstream it is an out-of-band response (nothing added to the
    conversation); the tool's output then goes up and the follow-up waits for the filler's
    response to end (no overlapping `response.create`)."""
    server = FakeRealtimeServer(reply_ms=800)

    async def lookup(args):
        await asyncio.sleep(2.0)  # ends while the filler is still being said (1.5 s .. 2.3 s)
        return {"answer": 42}

    s, rec = _tool_turn(server, Tool(ToolSpec("lookup", "Looks up.", {"type": "object", "properties": {}}), lookup),
                        language="ko")
    sess = server.sessions[0]
    filler, = rec.of(E.AgentToolFiller)
    assert filler.text in SLOW_FILLERS["ko"] and filler.name == "lookup"
    oob, output, followup = _upstream_calls(server)  # (the upstream's VAD started the first response)
    assert oob["type"] == "response.create" and oob["response"]["conversation"] == "none"
    assert oob["response"]["input"] == [] and oob["response"]["tool_choice"] == "none"
    assert oob["response"]["instructions"].endswith(filler.text)
    assert output["item"]["type"] == "function_call_output" and "42" in output["item"]["output"]
    assert followup["type"] == "response.create" and "conversation" not in followup.get("response", {})
    assert sess.overlapping == 0 and len(sess.out_of_band) == 1
    # the upstream's conversation: the call, its output and the reply; the filler is in none of it
    assert [i.get("type") for i in sess.items] == ["message", "function_call", "function_call_output", "message"]
    assert all(filler.text not in t for _, t in sess.texts())
    assert all(filler.text not in r.text for r in s.upstream.proto.conv.items.values())  # nor re-seeded later
    # here: one reply, completed, its audio the filler's and the answer's; memory in order
    reply, = done(rec)
    assert reply.status == "completed" and rec.of(E.AgentAudioDone)[0].samples == 2 * int(0.8 * R)
    assert [i.type for i in s.memory.items] == ["message", "message", "function_call", "function_call_output"]
    assert [i.role for i in s.memory.items if i.type == "message"] == ["user", "assistant"]
    said = s.memory.items[1].text
    assert said.index(filler.text) < said.index("Reply 3")  # the filler first, the real reply follows


def test_a_failing_server_tool_sends_its_error_up_and_the_reply_is_the_apology():
    server = FakeRealtimeServer(reply_ms=800)

    async def broken(args):
        raise RuntimeError("backend down")

    s, rec = _tool_turn(server, Tool(ToolSpec("lookup", "Looks up.", {"type": "object", "properties": {}}), broken))
    result, = rec.of(E.AgentToolResult)
    assert not result.ok and result.error_kind == "failed"
    assert not rec.of(E.AgentToolFiller)  # it failed at once: nothing to fill
    output, followup = _upstream_calls(server)
    assert "backend down" in output["item"]["output"] and "error" in output["item"]["output"]
    assert followup["response"]["instructions"].endswith(FAILURE_APOLOGIES["en"])
    assert followup["response"]["tool_choice"] == "none"  # an apology, not another try
    reply, = done(rec)
    assert reply.status == "completed" and rec.of(E.AgentAudioDone)[0].samples == int(0.8 * R)
    assert FAILURE_APOLOGIES["en"] in s.memory.items[1].text


def test_a_server_tool_that_hangs_past_its_timeout_ends_the_turn_cleanly():
    server = FakeRealtimeServer(reply_ms=800)

    async def hangs(args):
        await asyncio.Event().wait()

    tool = Tool(ToolSpec("lookup", "Looks up.", {"type": "object", "properties": {}}), hangs, timeout_s=4.0)
    s, rec = _tool_turn(server, tool)
    assert len(rec.of(E.AgentToolFiller)) == 1
    result, = rec.of(E.AgentToolResult)
    assert not result.ok and result.error_kind == "timeout"
    oob, output, followup = _upstream_calls(server)
    assert oob["response"]["conversation"] == "none" and "timed out" in output["item"]["output"]
    assert followup["response"]["instructions"].endswith(FAILURE_APOLOGIES["en"])
    reply, = done(rec)
    assert reply.status == "completed" and result.t - rec.of(E.AgentToolCall)[0].t >= 4.0
    assert rec.of(E.SessionState)[-1].state == "idle" and server.sessions[0].overlapping == 0  # nothing left hanging


@pytest.mark.parametrize("slow_one_works", [True, False])
def test_two_calls_in_one_response_get_one_follow_up_after_both_outputs(slow_one_works):
    """Two calls in one upstream response (one fails at once, one is slow): one filler, both
    outputs go up, then one follow-up; the apology only when every call failed (the pipeline's rule)."""
    server = FakeRealtimeServer(reply_ms=800)

    async def slow(args):
        await asyncio.sleep(3.0)
        if not slow_one_works:
            raise RuntimeError("also down")
        return "found it"

    async def broken(args):
        raise RuntimeError("backend down")

    spec = {"type": "object", "properties": {}}
    s, rec = _tool_turn(server, Tool(ToolSpec("slow", "Slow.", spec), slow), Tool(ToolSpec("broken", "Fails.", spec), broken))
    assert len(rec.of(E.AgentToolFiller)) == 1
    kinds = [(e["type"], e.get("item", {}).get("type")) for e in _upstream_calls(server)]
    # the failed call's output at once, the filler at 1.5 s, the slow call's output, then the follow-up
    assert kinds == [("conversation.item.create", "function_call_output"), ("response.create", None),
                     ("conversation.item.create", "function_call_output"), ("response.create", None)]
    oob, followup = (e for e in _upstream_calls(server) if e["type"] == "response.create")
    assert oob["response"]["conversation"] == "none" and "conversation" not in followup.get("response", {})
    said_sorry = followup.get("response", {}).get("instructions", "").endswith(FAILURE_APOLOGIES["en"])
    assert said_sorry is not slow_one_works and server.sessions[0].overlapping == 0
    reply, = done(rec)
    assert reply.status == "completed" and [c.name for c in reply.function_calls] == ["slow", "broken"]


def test_the_user_cutting_in_on_a_filler_cuts_the_reply_and_the_tool_output_still_goes_up():
    server = FakeRealtimeServer(reply_ms=800)
    server.transcripts.extend(["look it up", "never mind"])
    server.function_calls.append(("lookup", "{}"))

    async def lookup(args):
        await asyncio.sleep(3.0)
        return "found it"

    async def main():
        s = make(server, toolbox=ToolBox([Tool(ToolSpec("lookup", "Looks up.", {"type": "object", "properties": {}}),
                                                lookup)]), tool_slow_after_s=1.5)
        await s.ready(5)
        # the turn ends at ~1.8 s, the call comes, the filler plays from ~3.4 s: the user speaks at 3.5 s
        rec = await play_into_session(s, [quiet(0.3, rate=R), tone(1.0, rate=R), quiet(2.2, rate=R),
                                          tone(0.6, rate=R), quiet(6.0, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    filler, = rec.of(E.AgentToolFiller)
    assert filler.t < rec.of(E.AgentInterrupted)[0].t < rec.of(E.AgentToolResult)[0].t  # cut while the tool ran
    cut, answer = done(rec)
    assert cut.status == "cancelled" and answer.status == "completed"
    creates = sent(server, "response.create")
    assert len(creates) == 1 and creates[0]["response"]["conversation"] == "none"  # no follow-up for the cut reply
    assert sent(server, "response.cancel")
    out, = (e["item"] for e in sent(server, "conversation.item.create"))
    assert out["type"] == "function_call_output" and out["output"] == "found it"
    assert [i.type for i in s.memory.items].count("function_call_output") == 1


def test_client_tool_call_ends_the_reply_for_the_client():
    server = FakeRealtimeServer(reply_ms=800)
    server.function_calls.append(("lookup", "{}"))

    async def main():
        s = make(server)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.3, rate=R), tone(1.0, rate=R), quiet(3.0, rate=R)])
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    call, = rec.of(E.AgentFunctionCall)
    assert call.name == "lookup" and done(rec)[0].status == "completed"


def test_greeting_typed_text_and_client_items_go_upstream_in_order():
    server = FakeRealtimeServer(reply_ms=500)

    async def main():
        s = make(server)
        await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        s.say("Hello, how can I help?")
        await play_into_session(s, quiet(2.0, rate=R), recording=rec)
        s.add_item(Item(id="item_client_1", role="user", text="remember the number 7"))
        s.add_user_text("what number?")
        await play_into_session(s, quiet(2.0, rate=R), recording=rec)
        assert s.delete_item("item_client_1")
        await play_into_session(s, quiet(0.5, rate=R), recording=rec)
        await settle(s, 5)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    creates = sent(server, "response.create")
    assert "Hello, how can I help?" in creates[0]["response"]["instructions"]
    kinds = [e["type"] for e in server.sessions[0].received if e["type"] != "input_audio_buffer.append"]
    assert kinds == ["session.update", "response.create", "conversation.item.create", "conversation.item.create",
                     "response.create", "conversation.item.delete"]
    assert [t for _, t in server.sessions[0].texts()][-2:] != ["remember the number 7"]
    assert len(done(rec, "completed")) == 2


def test_earlier_conversations_go_upstream_before_the_first_turn():
    server = FakeRealtimeServer(reply_ms=500)
    server.transcripts.append("what is my name?")

    async def main():
        s = make(server)
        # what the store's recorder puts there when a known user connects (loaded in the background)
        s.memory.history = [Item(id="item_h1", role="user", text="My name is Mina."),  # type: ignore[attr-defined]
                            Item(id="item_h2", role="assistant", text="Nice to meet you, Mina.")]
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(3.0, rate=R)])
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    texts = server.sessions[0].texts()
    assert texts[:3] == [("user", "My name is Mina."), ("assistant", "Nice to meet you, Mina."),
                         ("user", "what is my name?")]
    assert "conversation of 3 items" in done(rec)[0].generated_text


def test_phone_audio_goes_up_as_g711_and_comes_back_at_8_khz():
    server = FakeRealtimeServer(reply_ms=500)

    async def main():
        s = make(server, output_rate=8000, input_rate=8000)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.3, rate=8000), tone(1.0, rate=8000), quiet(3.0, rate=8000)])
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    audio = server.sessions[0].session["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"} and audio["output"]["format"] == {"type": "audio/pcmu"}
    assert len(sent(server, "session.update")) == 1  # set from the start: no switch mid-call
    assert rec.of(E.AgentAudioDone)[0].samples == 4000  # 0.5 s at 8 kHz


# --------------------------------------------------------------------------- the factory and settings


def test_open_session_picks_the_brain_from_the_settings(monkeypatch):
    async def main():
        stack = fake_stack()
        pipeline = open_session(stack, settings=load_settings())
        assert type(pipeline) is Session
        await pipeline.close()
        monkeypatch.setenv("MOKSORI_BRAIN", "realtime")
        with pytest.raises(ConfigError):
            open_session(stack, settings=load_settings())  # no MOKSORI_REALTIME_URL
        monkeypatch.setenv("MOKSORI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime")
        monkeypatch.setenv("MOKSORI_REALTIME_TURN_DETECTION", "semantic_vad")
        settings = load_settings()
        cfg = brain_config(config_from_settings(settings), settings)
        assert cfg.turn.mode == "semantic" and cfg.turn.silence_duration_ms == settings.realtime.silence_duration_ms
        s = open_session(stack, settings=settings)
        assert isinstance(s, RealtimeSession) and s.who == "upstream"
        assert s.guard is None  # no kit, no guardrails
        await s.close()
        # the server's kit: its guardrails go to the realtime brain too
        from moksori.agent_kit import AgentKit
        from moksori.guardrails import Guardrails, TermList

        from moksori.guardrails import PIIRedactor

        guard = Guardrails(block=TermList({"en": ["banana"]}), redactor=PIIRedactor(["phone"]))
        s = open_session(stack, settings=settings, kit=AgentKit(guard=guard))
        assert isinstance(s, RealtimeSession) and s.guard is guard
        redact = s.store_redactor()  # what the store's recorder masks with
        assert redact is not None and "010-1234-5678" not in redact("call 010-1234-5678")
        await s.close()

    run_virtual(main())


def test_heard_text_estimate_never_runs_ahead_of_the_voice():
    assert estimated_samples("hello there", 24000) == int(24000 * 10 / 14)
    assert estimated_samples("안녕하세요", 24000) == int(24000 * 10 / 14)  # a syllable counts double


# --------------------------------------------------------------------------- the upstream as a text model


def test_realtime_llm_keeps_the_upstream_conversation_in_step_with_the_requests():
    server = FakeRealtimeServer(reply_ms=300)
    llm = RealtimeLLM(UpstreamOptions(EP, timeouts=Timeouts(keepalive_s=None)), connector=server.connector)

    async def ask(msgs):
        text, usage = "", None
        async for e in llm.chat(ChatRequest(messages=tuple(msgs))):
            if isinstance(e, TextDelta):
                text += e.text
            elif isinstance(e, Usage):
                usage = e
        return text, usage

    async def main():
        sys = Message("system", "Be brief.")
        a1, u1 = await ask([sys, Message("user", "hi")])
        a2, _ = await ask([sys, Message("user", "hi"), Message("assistant", a1), Message("user", "and you?")])
        # the user edits history ("clear"): the upstream forgets the old turns
        a3, _ = await ask([sys, Message("user", "new topic")])
        await llm.close()
        return a1, u1, a2, a3

    a1, u1, a2, a3 = run_virtual(main())
    assert a1.startswith("Reply 1") and u1 is not None and u1.output_tokens > 0
    assert "you said: and you?" in a2 and "conversation of 3 items" in a2  # hi, reply 1, and you?
    assert "conversation of 1 items" in a3  # the old turns were deleted upstream
    creates = sent(server, "response.create")
    assert all(c["response"]["instructions"] == "Be brief." and c["response"]["output_modalities"] == ["text"]
               for c in creates)
    assert len(sent(server, "conversation.item.delete")) == 4


# --------------------------------------------------------------------------- the server's guardrails


SAFE = "Let us talk about something else."


def guarded(server: FakeRealtimeServer, **kw) -> RealtimeSession:
    from moksori.guardrails import Guardrails, TermList

    # as `open_session(kit=...)` gives it: the guardrails of the server's kit
    return make(server, guard=Guardrails(block=TermList({"en": ["banana"]}), safe_replies={"en": SAFE}), **kw)


def test_output_guard_cuts_the_upstream_reply_at_a_blocked_clause_and_the_safe_sentence_follows():
    """The upstream's transcript is checked clause by clause: text goes out once checked; the
    blocked clause stops the reply where the listener is (response.cancel, a truncate at what was
    heard), and a new reply has the upstream say the safe sentence."""
    first = "Hello there. The secret code is banana split. Have a nice day and see you soon."
    server = FakeRealtimeServer(reply_ms=4000, reply_text=lambda sess: first if sess.responses == 1 else "Okay.")
    server.transcripts.extend(["what is the code"])

    async def main():
        s = guarded(server)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(9.0, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    trips = rec.of(E.GuardrailTripped)
    assert [(t.stage, t.action, t.policy) for t in trips] == [("output", "block", "terms")]
    cut = rec.of(E.AgentInterrupted)[0]
    assert cut.reason == "guardrail" and cut.text == "Hello there."
    assert sent(server, "response.cancel")
    (_item, ms), = server.sessions[0].truncates
    assert ms == cut.heard_ms < 4000  # the upstream keeps only what was heard
    deltas = "".join(d.delta for d in rec.of(E.AgentTextDelta))
    assert "banana" not in deltas and "Have a nice day" not in deltas
    replies = done(rec)
    assert replies[0].status == "cancelled" and "banana" not in replies[0].generated_text
    assert "banana" not in replies[0].text
    # the safe sentence, said by the upstream in a reply of its own
    creates = sent(server, "response.create")
    assert len(creates) == 1 and SAFE in creates[0]["response"]["instructions"]
    assert len(replies) == 2 and replies[1].status == "completed"
    assert all("banana" not in i.text for i in s.memory.items)
    assert trips[0].t <= cut.t and trips[0].response_id == replies[0].response_id


def test_input_guard_before_the_upstream_is_asked_moksori_turns():
    """Moksori's turns: the local words are known before the upstream is asked: a blocked turn
    makes the upstream say the safe sentence, and the turn's item is deleted upstream."""
    server = FakeRealtimeServer(reply_ms=800)
    server.transcripts.extend(["tell me about banana bread", "thanks"])

    async def main():
        s = guarded(server, who="moksori", stt=ScriptedSTT(["tell me about banana bread.", "thanks."]))
        await s.ready(5)
        rec = await play_into_session(s, two_spoken_turns())
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    from moksori.engine.memory import BLOCKED_TEXT

    trips = rec.of(E.GuardrailTripped)
    assert [(t.stage, t.action, t.policy) for t in trips] == [("input", "block", "terms")]
    removed = rec.of(E.GuardrailInputRemoved)
    assert len(removed) == 1
    sess = server.sessions[0]
    kinds = [e["type"] for e in sess.received if e["type"] != "input_audio_buffer.append"]
    # the blocked turn leaves the upstream before the upstream is asked for the safe sentence
    assert kinds == ["session.update", "input_audio_buffer.commit", "conversation.item.delete", "response.create",
                     "input_audio_buffer.commit", "response.create"]
    creates = sent(server, "response.create")
    assert SAFE in creates[0]["response"]["instructions"]
    assert "instructions" not in (creates[1].get("response") or {})
    # the upstream no longer has the blocked words; here the item says the placeholder, even after
    # the upstream's own transcript came
    assert all("banana" not in text for _role, text in sess.texts())
    user_items = [i for i in s.memory.items if i.role == "user"]
    assert [i.text for i in user_items] == [BLOCKED_TEXT, "thanks"]
    assert removed[0].item_ids == (user_items[0].id,)


def test_input_guard_on_late_words_upstream_vad_cuts_the_reply():
    """The upstream's VAD answers at once; the words come 0.8 s later and are blocked: the reply
    to them is cut, the safe sentence said, and the turn deleted upstream."""
    server = FakeRealtimeServer(reply_ms=4000, transcript_delay_s=0.8,
                                reply_text=lambda sess: "Sure, here is how you make it, step by step.")
    server.transcripts.extend(["tell me about banana bread"])

    async def main():
        s = guarded(server)
        await s.ready(5)
        rec = await play_into_session(s, [quiet(0.5, rate=R), tone(1.0, rate=R), quiet(8.0, rate=R)])
        await settle(s, 10)
        await s.close()
        return s, rec

    s, rec = run_virtual(main())
    from moksori.engine.memory import BLOCKED_TEXT

    trips = rec.of(E.GuardrailTripped)
    assert [(t.stage, t.action, t.policy) for t in trips] == [("input", "block", "terms")]
    cut = rec.of(E.AgentInterrupted)[0]
    assert cut.reason == "guardrail" and cut.heard_ms < 1500
    assert sent(server, "response.cancel") and sent(server, "conversation.item.delete")
    creates = sent(server, "response.create")
    assert len(creates) == 1 and SAFE in creates[0]["response"]["instructions"]
    replies = done(rec)
    assert [r.status for r in replies] == ["cancelled", "completed"]
    assert [i.text for i in s.memory.items if i.role == "user"] == [BLOCKED_TEXT]
    assert all("banana" not in text for _role, text in server.sessions[0].texts())


@pytest.mark.parametrize("blocked", [False, True])
def test_words_checked_as_they_came_are_not_checked_again_by_the_reply(blocked):
    """The words of a turn arrive (and are checked) before the reply to it asks the upstream, as
    the local STT's words of a moksori turn often do: the reply waits for that check's verdict
    instead of sending the words to the checker (a paid moderation endpoint) a second time, and
    acts on it itself: blocked, this same reply has the upstream say the safe sentence."""
    server = FakeRealtimeServer(reply_ms=500)
    checked: list[str] = []
    words = "tell me about banana bread" if blocked else "tell me about rye bread"

    async def main():
        s = guarded(server, who="moksori")
        check = s.guard.check_input

        async def counted(text, language):  # a slow checker: the reply asks while it runs
            checked.append(text)
            await asyncio.sleep(0.3)
            return await check(text, language)

        s.guard.check_input = counted
        await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        s.memory.add(Item(id="item_u1", role="user", text=words))
        s._on_words("item_u1", words)  # the words are known: checked as they came
        s.create_response()
        await play_into_session(s, quiet(3.0, rate=R), recording=rec)
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    assert checked == [words]  # once
    creates = sent(server, "response.create")
    assert len(creates) == 1 and len(rec.of(E.AgentResponseStarted)) == 1
    trips = rec.of(E.GuardrailTripped)
    if blocked:
        assert SAFE in creates[0]["response"]["instructions"]
        assert [(t.stage, t.action) for t in trips] == [("input", "block")] and len(rec.of(E.GuardrailInputRemoved)) == 1
    else:
        assert SAFE not in str(creates[0]) and not trips
