"""Session logic in virtual time with scripted fakes: races, barge-in, truncation, tools.

Fakes here stand in for models only to control timing; tests/test_conversation.py runs the
same scenarios with the real models on real recorded speech.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.engine.tools import Tool, ToolBox
from moksori.engine.turns import TurnConfig
from moksori.errors import AudioFormatError, ProviderError
from moksori.engine.context import MAX_TOKEN_CHARS
from moksori.engine.tool_calls import MAX_TOOL_CALLS_PER_ROUND, MAX_TOOL_ROUNDS
from moksori.providers.base import ChatDone, ToolCall, ToolCallEvent, ToolSpec
from moksori.testing.fakes import FixedTurn, ScriptedLLM, ScriptedSTT, ToneTTS, fake_stack, quiet, tone
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual

CFG = SessionConfig(output_rate=16000, partial_interval_ms=0)


def run(coro):
    return run_virtual(coro)


def replies(rec: Recording) -> list:
    return [e for e in rec.of(E.AgentResponseDone) if e.status == "completed"]


def test_two_turns_two_replies_in_milliseconds_of_real_time() -> None:
    import time

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hello there.", "what time is it?"])), CFG)
        rec = await play_into_session(s, [quiet(0.5), tone(1.5), quiet(4.0), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec, s

    t0 = time.perf_counter()
    rec, s = run(main())
    assert time.perf_counter() - t0 < 5.0  # 11 s of conversation in virtual time
    assert len(rec.of(E.UserTurnEnded)) == 2
    assert len(replies(rec)) == 2
    texts = [(i.role, i.text) for i in s.memory.items]
    assert [r for r, _ in texts] == ["user", "assistant", "user", "assistant"]
    assert texts[0][1] == "hello there." and texts[2][1] == "what time is it?"
    # the reply follows the end of speech well under a second with instant fakes
    for stop, started in zip(rec.of(E.UserSpeechStopped), rec.of(E.AgentAudioStarted)):
        assert 0.0 < started.t - stop.t < 0.6


def test_barge_in_interrupts_clears_and_truncates_memory() -> None:
    long_reply = "This is a long answer that goes on and on, with many words, so that it takes several seconds to say."

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["tell me a story.", "stop please."]),
                               llm=ScriptedLLM(long_reply)), CFG)
        # speak, wait ~1.4 s into the reply, then talk over it
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(0.8), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run(main())
    interrupted = rec.of(E.AgentInterrupted)
    assert len(interrupted) == 1
    ev = interrupted[0]
    assert rec.of(E.AgentAudioCleared), "the transport must be told to drop queued audio"
    heard = ev.text
    assert heard and long_reply.startswith(heard.rstrip(".,")[:10])
    assert len(heard.split()) < len(long_reply.split())
    first_assistant = [i for i in s.memory.items if i.role == "assistant"][0]
    assert first_assistant.text == heard and first_assistant.status == "incomplete"
    # reaction: onset of the user's speech -> audio cleared
    assert ev.reaction_ms is not None and ev.reaction_ms <= 200
    done = [e for e in rec.of(E.AgentResponseDone) if e.response_id == ev.response_id]
    assert len(done) == 1 and done[0].interrupted and done[0].text == heard
    # and the interruption became the next turn, which got its own reply
    assert [i.text for i in s.memory.items if i.role == "user"] == ["tell me a story.", "stop please."]
    assert len(replies(rec)) == 1


def test_heard_text_reaches_the_next_llm_request() -> None:
    llm = ScriptedLLM("One two three four five six seven eight nine ten eleven twelve thirteen fourteen.")

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["count.", "wait."]), llm=llm), CFG)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.6), tone(0.8), quiet(3.0)])
        await settle(s)
        await s.close()

    run(main())
    second = llm.requests[-1]
    assistant = [m for m in second.messages if m.role == "assistant"]
    assert assistant and 0 < len(assistant[0].content.split()) < 14


def test_300ms_pause_mid_sentence_keeps_one_turn() -> None:
    async def main():
        stt = ScriptedSTT(by_duration=lambda s: "I would like to book a table for two.")
        s = Session(fake_stack(stt=stt), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(0.9), quiet(0.3), tone(0.9), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert len(rec.of(E.UserSpeechStarted)) == 1
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(replies(rec)) == 1


def test_cough_during_reply_does_not_interrupt() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hi."]), llm=ScriptedLLM("A fairly long reply that keeps talking for a while now.")), CFG)
        # a 50 ms burst (800 samples) touches at most 3 frames of 32 ms (96 ms): under the 128 ms default
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.8), tone(0.05), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert rec.of(E.AgentInterrupted) == []
    assert len(replies(rec)) == 1


def test_late_stt_result_after_user_resumes_makes_no_second_reply() -> None:
    # STT takes 0.5 s: the speculative transcript of the first pause arrives after the user resumed.
    stt = ScriptedSTT(["first half", "first half and second half."], delay_s=0.5)
    llm = ScriptedLLM("Got it.")

    async def main():
        s = Session(fake_stack(stt=stt, llm=llm, turn=FixedTurn(0.05)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.35), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run(main())
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(rec.of(E.AgentResponseStarted)) == 1
    assert len(replies(rec)) == 1
    assert [i.text for i in s.memory.items if i.role == "user"] == ["first half and second half."]


def test_speculation_counters_count_a_pause_the_user_went_on_after() -> None:
    # the first pause's decode (0.5 s) is still running when the user resumes: it is cancelled
    # mid-decode; the second pause's speculation ends the turn
    stt = ScriptedSTT(["first half", "first half and second half."], delay_s=0.5)

    async def main():
        s = Session(fake_stack(stt=stt, llm=ScriptedLLM("Got it."), turn=FixedTurn(0.05)), CFG)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.35), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return s.speculations

    specs = run(main())
    assert (specs.started, specs.cancelled, specs.cancelled_decoding) == (2, 1, 1)


def test_speculation_counters_one_pause_nothing_cancelled() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hi."]), llm=ScriptedLLM("Hello.")), CFG)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(3.0)])
        await settle(s)
        await s.close()
        return s.speculations

    specs = run(main())
    assert (specs.started, specs.cancelled, specs.cancelled_decoding) == (1, 0, 0)


def test_late_llm_tokens_after_barge_in_are_dropped() -> None:
    llm = ScriptedLLM("word " * 60, token_delay_s=0.08)  # slow: still generating when interrupted

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["go.", "stop."]), llm=llm), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.5), tone(0.6), quiet(6.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    first = rec.of(E.AgentInterrupted)[0].response_id
    cleared_t = rec.of(E.AgentAudioCleared)[0].t
    late = [e for e in rec.events if getattr(e, "response_id", None) == first and e.t > cleared_t
            and e.type not in ("agent.response_done", "agent.interrupted")]
    assert late == []
    assert llm.cancelled >= 1
    assert len([e for e in rec.of(E.AgentResponseDone) if e.response_id == first]) == 1


def test_commit_twice_and_speculation_race_give_one_reply() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hello."], delay_s=0.3)), CFG)
        rec = Recording(16000)
        s.bus.listen(rec)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.2)], recording=rec)
        s.commit()
        s.commit()
        await play_into_session(s, [quiet(3.0)], recording=rec)
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(replies(rec)) == 1


def test_noise_interruption_with_no_words_reoffers_the_rest() -> None:
    reply = "First part of the answer is here. And the second part continues after that with more words."

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["question?", ""]), llm=ScriptedLLM(reply)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.5), tone(0.4), quiet(8.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert len(rec.of(E.AgentInterrupted)) == 1
    offers = rec.of(E.AgentReoffer)
    assert len(offers) == 1 and reply.endswith(offers[0].text.strip()) and offers[0].text


def test_speech_while_thinking_waits_and_noise_does_not_cancel() -> None:
    # the reply is slow to start (LLM 0.8 s); a short vocal noise arrives while thinking
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hi.", ""]), llm=ScriptedLLM("Hello!", first_token_s=0.8)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.5), tone(0.2), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert len(replies(rec)) == 1
    assert rec.of(E.AgentInterrupted) == []


def test_local_tool_runs_and_result_goes_back_to_the_llm() -> None:
    calls: list[dict] = []

    async def weather(args: dict) -> dict:
        calls.append(args)
        return {"city": args["city"], "sky": "clear"}

    def tool_call(req):
        if not any(m.role == "tool" for m in req.messages):
            return ToolCall("call_1", "get_weather", json.dumps({"city": "Seoul"}))
        return None

    llm = ScriptedLLM(lambda req: "It is clear in Seoul.", tool_call=tool_call)
    box = ToolBox([Tool(ToolSpec("get_weather", "weather", {"type": "object"}), weather)])

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["weather in seoul?"]), llm=llm), CFG, toolbox=box)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert calls == [{"city": "Seoul"}]
    assert rec.of(E.AgentToolCall) and rec.of(E.AgentToolResult)
    assert replies(rec)[0].text == "It is clear in Seoul."


def _weather_turn(llm: ScriptedLLM) -> tuple[Recording, list[dict]]:
    """One spoken turn ("weather?") with a server-side get_weather tool: the recording and the
    tool's calls."""
    ran: list[dict] = []

    async def weather(args: dict) -> dict:
        ran.append(args)
        return {"sky": "clear"}

    box = ToolBox([Tool(ToolSpec("get_weather", "weather", {"type": "object"}), weather)])

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["weather?"]), llm=llm), CFG, toolbox=box)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    return run(main()), ran


def test_a_model_that_calls_tools_every_round_still_ends_in_words() -> None:
    """The last of the MAX_TOOL_ROUNDS rounds offers no tools: a model that called a tool in
    every round ended its reply with no words at all (silence on a phone call)."""
    def tool_call(req):
        return ToolCall(f"call_{len(req.messages)}", "get_weather", "{}") if req.tools else None

    llm = ScriptedLLM(lambda req: "It is clear.", tool_call=tool_call)
    rec, ran = _weather_turn(llm)
    assert len(llm.requests) == MAX_TOOL_ROUNDS and llm.requests[-1].tools == ()
    assert len(ran) == MAX_TOOL_ROUNDS - 1
    assert replies(rec)[0].text == "It is clear."


class ManyCallsLLM(ScriptedLLM):
    """A stand-in for a model that asks for `n` tool calls in its first round, then answers."""

    def __init__(self, n: int) -> None:
        super().__init__("Done.")
        self.n = n

    async def chat(self, request):
        if any(m.role == "tool" for m in request.messages):
            async for ev in super().chat(request):
                yield ev
            return
        self.requests.append(request)
        for i in range(self.n):
            yield ToolCallEvent(ToolCall(f"call_{i}", "get_weather", "{}"))
        yield ChatDone("tool_calls")


def test_tool_calls_of_one_round_are_capped() -> None:
    rec, ran = _weather_turn(ManyCallsLLM(500))
    assert len(ran) == MAX_TOOL_CALLS_PER_ROUND
    assert replies(rec)[0].text == "Done."


def test_a_reply_is_cut_when_the_llm_ignores_max_tokens() -> None:
    """An upstream that ignores max_tokens streamed a reply that never ended; the next turn was
    refused while it went on. It is cut at max_tokens of the longest tokens; the next turn is
    answered."""
    llm = ScriptedLLM(lambda req: "Fine." if len(llm.requests) > 1 else "word " * 20000, token_delay_s=0.001)

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["talk forever.", "and now?"]), llm=llm,
                               tts=ToneTTS(seconds_per_char=0.001)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.5)])
        await settle(s)
        rec2 = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0)], recording=rec)
        await settle(s)
        await s.close()
        return rec2

    rec = run(main())
    done = replies(rec)
    cap = CFG.max_output_tokens * MAX_TOKEN_CHARS
    assert len(done) == 2 and cap <= len(done[0].generated_text) < cap + 100
    assert done[1].text == "Fine."


def test_client_tool_ends_the_response_with_a_function_call() -> None:
    llm = ScriptedLLM(tool_call=lambda req: ToolCall("call_9", "lookup", "{}"))

    async def main():
        cfg = CFG.with_(tools=(ToolSpec("lookup", "client side", {"type": "object"}),))
        s = Session(fake_stack(stt=ScriptedSTT(["look it up."]), llm=llm), cfg)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    fc = rec.of(E.AgentFunctionCall)
    assert len(fc) == 1 and fc[0].name == "lookup" and fc[0].call_id == "call_9"
    assert replies(rec)[0].function_calls[0].name == "lookup"


def test_manual_mode_commit_then_response_create() -> None:
    async def main():
        cfg = CFG.with_(turn=TurnConfig(mode="manual"))
        s = Session(fake_stack(stt=ScriptedSTT(["typed by voice."])), cfg)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.0)])
        assert rec.of(E.UserTurnEnded) == []
        s.commit()
        await play_into_session(s, [quiet(0.5)], recording=rec)
        assert rec.of(E.AgentResponseStarted) == []  # manual: the client asks for a reply
        s.create_response()
        await play_into_session(s, [quiet(3.0)], recording=rec)
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert rec.of(E.UserTranscript)[0].text == "typed by voice."
    assert len(replies(rec)) == 1


def test_turning_turn_detection_off_mid_speech_does_not_hold_replies_forever() -> None:
    """A Realtime client set turn_detection to null while the user was speaking: the VAD's turn
    could no longer end, its hold on replies stayed, and every later reply waited forever."""
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["never sent."])), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0)])
        assert rec.of(E.UserSpeechStarted) and s.taker.state != "idle"
        s.update(CFG.with_(turn=TurnConfig(mode="manual")))
        s.add_user_text("Say: ok.", respond=False)
        s.create_response()
        await play_into_session(s, [tone(0.5), quiet(3.0)], recording=rec)
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert len(replies(rec)) == 1 and rec.of(E.AgentAudioStarted)
    assert rec.of(E.UserTurnEnded) == []  # the dropped turn: no transcript of its own
    assert [e.text for e in rec.of(E.UserTranscript)] == ["Say: ok."]


def test_a_caller_gone_mid_turn_keeps_their_last_words_and_gets_no_reply() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["a gold ring will please most any girl."])), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.2)])  # hung up while speaking
        assert s.taker.state != "idle" and rec.of(E.UserTurnEnded) == []
        kept = await s.keep_last_words(5.0)
        await s.close()
        return rec, s, kept

    rec, s, kept = run(main())
    assert kept and [(i.role, i.text) for i in s.memory.items] == [("user", "a gold ring will please most any girl.")]
    assert [e.reason for e in rec.of(E.UserTurnEnded)] == ["commit"]
    assert rec.of(E.AgentResponseStarted) == []


def test_keeping_last_words_when_nothing_was_said_is_a_no_op() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["never."])), CFG)
        rec = await play_into_session(s, [quiet(1.0)])
        kept = await s.keep_last_words(5.0)
        await s.close()
        return rec, s, kept

    rec, s, kept = run(main())
    assert kept and s.memory.items == [] and rec.of(E.UserTurnEnded) == []


# ------------------------------------------------------------------ bad input


class BoomLLM(ScriptedLLM):
    async def chat(self, request):
        raise ProviderError("model server exploded", retryable=False)
        yield  # pragma: no cover


def test_provider_failure_reports_error_and_the_session_goes_on() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["one.", "two."]), llm=BoomLLM()), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(1.0), quiet(2.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    errors = rec.of(E.ErrorEvent)
    assert len(errors) == 2 and "exploded" in errors[0].message
    assert len(rec.of(E.UserTurnEnded)) == 2  # still listening after the failure
    assert all(e.status == "failed" for e in rec.of(E.AgentResponseDone))


def test_bad_audio_input_is_rejected_cleanly() -> None:
    async def main():
        s = Session(fake_stack(), CFG)
        with pytest.raises(AudioFormatError):
            s.push_audio(b"\x00\x01\x02")  # type: ignore[arg-type]
        with pytest.raises(AudioFormatError):
            Frame.from_bytes(b"\x00\x01\x02", 16000)
        s.push_audio(Frame(np.zeros(0, dtype=np.int16), 16000))  # empty: a no-op
        s.push_audio(Frame(np.zeros(16000 * 600, dtype=np.int16), 8000))  # 20 min at 8 kHz, silent
        rec = await play_into_session(s, [tone(1.0, rate=44100), quiet(3.0, rate=44100)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    assert len(replies(rec)) == 1  # odd sample rates are resampled, and the session still works


def test_close_mid_reply_leaves_no_tasks() -> None:
    import asyncio

    async def main():
        s = Session(fake_stack(llm=ScriptedLLM("word " * 80, token_delay_s=0.05)), CFG)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.2)])
        await s.close()
        await asyncio.sleep(0)
        mine = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return mine

    assert run(main()) == []


def test_tone_tts_shape_is_used() -> None:
    # guard: the fakes really produce audio at the configured rate
    async def main():
        tts = ToneTTS(rate=16000)
        frames = [f async for f in tts.synthesize("hello", __import__("moksori.providers.base", fromlist=["TTSOptions"]).TTSOptions())]
        return frames

    frames = run(main())
    assert frames[0].rate == 16000 and len(frames[0]) == int(5 * 0.06 * 16000)


# ------------------------------------------------------------------ interruption edge cases


def test_stale_reply_dropped_before_it_was_heard_does_not_block_the_next_one() -> None:
    # The first reply is still waiting for its first token when the user's second turn ends: it
    # is dropped unheard. The speaker was waiting for that reply's audio; it must move on.
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hi.", "and one more thing."]),
                               llm=ScriptedLLM("Hello!", first_token_s=1.5)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.5), tone(0.3), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    first, second = rec.of(E.AgentResponseStarted)
    dropped = rec.of(E.AgentInterrupted)
    assert [d.response_id for d in dropped] == [first.response_id]
    assert dropped[0].heard_ms == 0 and dropped[0].onset is None and dropped[0].reaction_ms is None
    done = {d.response_id: d for d in rec.of(E.AgentResponseDone)}
    assert done[first.response_id].status == "cancelled"
    assert done[second.response_id].status == "completed"
    assert [a.response_id for a in rec.of(E.AgentAudioStarted)] == [second.response_id]


def test_a_reply_not_yet_heard_does_not_start_over_the_user() -> None:
    # The first reply's audio is ready while the user is in the middle of a second utterance:
    # it waits, then is dropped as stale once their words are known.
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hi.", "and one more thing."]),
                               llm=ScriptedLLM("Hello!", first_token_s=0.8)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.5), tone(0.3), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run(main())
    second_turn = rec.of(E.UserSpeechStarted)[1]
    committed = rec.of(E.UserCommitted)[1]
    assert not [a for a in rec.of(E.AgentAudioStarted) if second_turn.t <= a.t <= committed.t]
    first, second = rec.of(E.AgentResponseStarted)
    done = {d.response_id: d for d in rec.of(E.AgentResponseDone)}
    assert done[first.response_id].status == "cancelled" and done[first.response_id].text == ""
    assert done[second.response_id].status == "completed"


def test_barge_in_at_the_very_end_keeps_what_was_heard() -> None:
    # All audio has left the speaker; the listener is still hearing its last 200 ms (the lead).
    # Talking over that tail must keep the reply in memory, not cut it to nothing.
    reply = "Hello there, my good friend."
    stack_args = dict(stt=ScriptedSTT(["hi.", "thanks."]), llm=ScriptedLLM(reply))

    async def reference():
        s = Session(fake_stack(**stack_args), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(5.0)])
        await s.close()
        return rec.of(E.AgentResponseDone)[0].t

    end = run(reference())

    async def main():
        s = Session(fake_stack(**stack_args), CFG)
        # speech starts 250 ms before the reply's audio ends: confirmed as a barge-in 128 ms later
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(end - 1.3 - 0.25), tone(0.6), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run(main())
    cut = rec.of(E.AgentInterrupted)
    assert len(cut) == 1, rec.types()
    assert len(cut[0].text.split()) >= 4, cut[0]
    assert cut[0].heard_ms > 0
    first = [i for i in s.memory.items if i.role == "assistant"][0]
    assert first.text == cut[0].text


def test_cancel_response_by_id_cancels_only_that_reply() -> None:
    async def main():
        s = Session(fake_stack(llm=ScriptedLLM("word " * 30, token_delay_s=0.05)), CFG)
        rec = Recording(16000)
        s.bus.listen(rec)
        side = s.create_response(in_conversation=False, modalities=("text",))
        main_reply = s.create_response()
        await play_into_session(s, [quiet(0.5)], recording=rec)
        assert s.cancel_response("resp_does_not_exist") == []
        assert s.cancel_response(side.id) == [side.id]
        assert s.cancel_response(side.id) == []  # already over
        await play_into_session(s, [quiet(12.0)], recording=rec)
        await settle(s)
        await s.close()
        return rec, side.id, main_reply.id

    rec, side, main_reply = run(main())
    done = {d.response_id: d for d in rec.of(E.AgentResponseDone)}
    assert done[side].status == "cancelled" and done[side].reason == "client_cancelled"
    assert done[main_reply].status == "completed"
    assert [i.response_id for i in rec.of(E.AgentInterrupted)] == [side]
    assert not rec.of(E.AgentAudioCleared)  # the text-only reply had no audio to clear


def test_a_failed_speculative_reply_is_forgotten() -> None:
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["one."]), llm=BoomLLM()), CFG)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0)])
        await settle(s)
        left = s._responses.active()
        await s.close()
        return left

    assert run(main()) == []


# ------------------------------------------------------------------ a listener that vanished


def _closed_mid_reply(at_s: float, *, lost_s: float = 0.0) -> E.AgentResponseDone:
    """The reply's end when the session closes `at_s` after the user's turn ended; with `lost_s`,
    the transport says the listener was last heard from that long before the close."""
    story = "One clause here, then another clause there, and a third one after that, " * 4

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["tell me a story."]), llm=ScriptedLLM(story)), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.5)])
        assert rec.of(E.UserTurnEnded) and rec.of(E.AgentAudioStarted)
        ended = rec.of(E.UserTurnEnded)[0].t
        await s.clock.sleep(ended + at_s - s.clock.now())
        s.listener_lost(lost_s)
        await s.close()
        return rec

    rec = run(main())
    done = rec.of(E.AgentResponseDone)
    assert len(done) == 1 and done[0].interrupted
    return done[0]


def test_a_vanished_listener_heard_the_reply_only_until_it_was_last_heard_from() -> None:
    """Gone 3 s into the reply, noticed (the keepalive) 4 s later: stored as heard at 3 s, as if
    the session had closed then, not at 7 s."""
    at_gone = _closed_mid_reply(3.0)
    noticed = _closed_mid_reply(7.0, lost_s=4.0)
    by_the_clock = _closed_mid_reply(7.0)
    assert at_gone.text and noticed.text == at_gone.text
    assert len(by_the_clock.text.split()) > len(noticed.text.split())


def _turn_ends(turn: TurnConfig, pattern: list[Frame], stt: ScriptedSTT, probability: float = 0.95) -> Recording:
    async def main():
        s = Session(fake_stack(stt=stt, turn=FixedTurn(probability)), CFG.with_(turn=turn))
        rec = await play_into_session(s, pattern)
        await settle(s)
        await s.close()
        return rec

    return run(main())


def test_confident_end_ends_a_sure_and_complete_turn_at_its_shorter_silence() -> None:
    for turn, reason, lo, hi in ((TurnConfig(), "model", 400, 440),
                                 (TurnConfig(confident_eot=0.9, confident_silence_ms=250), "confident", 250, 290)):
        rec = _turn_ends(turn, [quiet(0.3), tone(1.0), quiet(3.0)], ScriptedSTT(["I would like a table."]))
        ended = rec.of(E.UserTurnEnded)
        assert len(ended) == 1 and ended[0].reason == reason
        assert lo <= ended[0].silence_ms < hi, ended[0].silence_ms
        assert len(replies(rec)) == 1


def test_confident_end_keeps_a_300ms_pause_whose_words_are_unfinished() -> None:
    turn = TurnConfig(confident_eot=0.9, confident_silence_ms=250)
    stt = ScriptedSTT(by_duration=lambda s: "I would like to book a" if s < 1.6 else "I would like to book a table.")
    rec = _turn_ends(turn, [quiet(0.3), tone(0.9), quiet(0.3), tone(0.9), quiet(3.0)], stt)
    assert len(rec.of(E.UserSpeechStarted)) == 1
    assert [e.reason for e in rec.of(E.UserTurnEnded)] == ["confident"]
    assert len(replies(rec)) == 1
