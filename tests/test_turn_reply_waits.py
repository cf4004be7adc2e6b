"""`interrupt_response` off: the user speaks over a reply without stopping it, and their turn is
answered once that reply is done (engine/responses.py, `WaitingReply`). In virtual time with
scripted fakes (ScriptedSTT, ScriptedLLM stand in for the models only to control timing); the
real server with the openai SDK is test_realtime_waits.py.

Before: the turn's reply started at once beside the one playing (two responses in progress in
one conversation, the second's prompt holding the first's words so far), and two turns over one
reply got two more replies.
"""

from __future__ import annotations

import asyncio

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.engine.turns import TurnConfig
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual

STORY = " ".join(["Once upon a time a small boat left the harbour at dawn. It sailed past the lighthouse and the islands."] * 2)
TURNS = ["tell me a story.", "and then what?", "where did they go?"]
CFG = SessionConfig(output_rate=16000, partial_interval_ms=0,
                    turn=TurnConfig(mode="silence", silence_duration_ms=500, interrupt_response=False))


def session(llm: ScriptedLLM) -> Session:
    return Session(fake_stack(stt=ScriptedSTT(TURNS), llm=llm), CFG)


def started(rec: Recording) -> list[E.AgentResponseStarted]:
    return rec.of(E.AgentResponseStarted)


def done(rec: Recording) -> list[E.AgentResponseDone]:
    return rec.of(E.AgentResponseDone)


def test_a_turn_spoken_over_a_reply_is_answered_once_the_reply_is_done() -> None:
    llm = ScriptedLLM(STORY, token_delay_s=0.2)

    async def main() -> tuple[Recording, Session]:
        s = session(llm)
        # the story plays for ~14 s from ~1.5 s; the second turn ends at ~4.3 s, over it
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(0.8), quiet(1.0)])
        await settle(s, 60.0)
        await s.close()
        return rec, s

    rec, s = run_virtual(main())
    first, second = started(rec)
    first_done, second_done = done(rec)
    assert first_done.response_id == first.response_id and first_done.status == "completed"
    assert not first_done.interrupted  # heard whole: the user did not stop it
    assert second.t >= first_done.t, "the second reply started beside the first"
    assert second_done.response_id == second.response_id and second_done.status == "completed"
    user_turns = [e for e in rec.of(E.UserTurnEnded)]
    assert len(user_turns) == 2 and user_turns[1].t < first_done.t  # committed while the story played
    # the second reply read the whole first reply, then the second turn
    request = llm.requests[-1]
    said = [(m.role, m.content) for m in request.messages if m.role != "system"]
    assert said == [("user", TURNS[0]), ("assistant", STORY.strip()), ("user", TURNS[1])]
    assert [(i.role, i.text) for i in s.memory.items][-1][0] == "assistant"
    assert len(llm.requests) == 2


def test_two_turns_over_one_reply_get_one_answer_after_it() -> None:
    llm = ScriptedLLM(STORY, token_delay_s=0.2)

    async def main() -> Recording:
        s = session(llm)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(0.8), quiet(2.0), tone(0.8),
                                          quiet(1.0)])
        await settle(s, 60.0)
        await s.close()
        return rec

    rec = run_virtual(main())
    assert len(rec.of(E.UserTurnEnded)) == 3
    assert len(started(rec)) == 2 and all(d.status == "completed" for d in done(rec))
    assert started(rec)[1].t >= done(rec)[0].t
    said = [(m.role, m.content) for m in llm.requests[-1].messages if m.role != "system"]
    assert said[-1] == ("user", f"{TURNS[1]} {TURNS[2]}")  # one answer for both turns
    assert len(llm.requests) == 2


def test_a_client_cancel_or_its_own_response_supersedes_the_waiting_turn_reply() -> None:
    """While the turn's reply waits: a cancel of every reply drops it too (nothing starts after);
    a client's own response in the conversation replaces it (it answers the turn)."""
    async def main(action: str) -> tuple[Recording, ScriptedLLM]:
        llm = ScriptedLLM(STORY, token_delay_s=0.2)
        s = session(llm)
        rec = Recording(16000)
        s.bus.listen(rec)
        feed = asyncio.create_task(play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(0.8), quiet(3.0)],
                                                     recording=rec))
        await s.clock.sleep(6.0)  # the second turn is over, its reply waiting for the story
        assert len(rec.of(E.UserTurnEnded)) == 2 and len(started(rec)) == 1 and not done(rec)
        if action == "cancel":
            s.cancel_response()
        else:
            s.create_response(instructions="answer the user")
        await feed
        await settle(s, 60.0)
        await s.close()
        return rec, llm

    rec, llm = run_virtual(main("cancel"))
    assert len(started(rec)) == 1 and done(rec)[0].status == "cancelled"
    assert len(llm.requests) == 1
    assert [e.text for e in rec.of(E.UserTranscript)] == TURNS[:2]  # the words are kept

    rec, llm = run_virtual(main("create"))
    assert len(started(rec)) == 2 and len(llm.requests) == 2  # the story, the client's; not the turn's
    assert llm.requests[-1].messages[0].content.startswith("answer the user")
