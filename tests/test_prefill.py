"""LLM prefill of the user's words while they speak (engine/prefill.py, LlamaCppLLM.prefill).

The session tests run in virtual time with scripted fakes (a scripted STT whose partials grow
with the audio, and a scripted LLM that records its prefill calls): they check which words are
prefilled, when, and that the prefilled prompt is the start of the reply's own prompt. The
model tests run the packaged SmolLM2 on llama.cpp: the prefilled tokens are found in the KV
cache by the real request, and the reply is the same as without the prefill.
"""

from __future__ import annotations

import asyncio

import pytest

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.prefill import stable_words
from moksori.engine.session import Session
from moksori.providers.base import ChatRequest, Message, STTCaps
from moksori.testing.fakes import FixedTurn, ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual

WORDS = "could you please tell me when the next train to the city leaves tonight".split()


def words_for(seconds: float) -> str:
    """What the scripted STT hears in `seconds` of audio: about three words a second."""
    return " ".join(WORDS[:max(1, int(seconds * 3))]) + "."


class PrefillRecordingLLM(ScriptedLLM):
    """A scripted LLM (a stand-in for llama.cpp's timing, not its cache) that records prefills."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.prefills: list[tuple[ChatRequest, str, float]] = []

    async def prefill(self, request: ChatRequest, upto: str) -> int:
        self.prefills.append((request, upto, asyncio.get_running_loop().time()))
        await asyncio.sleep(0.03)
        return len(upto.split())

    async def prefill_history(self, request: ChatRequest) -> int:
        self.prefills.append((request, "", asyncio.get_running_loop().time()))
        await asyncio.sleep(0.01)
        return 5


def session_run(cfg: SessionConfig, audio) -> tuple:
    llm = PrefillRecordingLLM()

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(by_duration=words_for), llm=llm), cfg)
        rec = await play_into_session(s, audio)
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run_virtual(main())
    return rec, s, llm


CFG = SessionConfig(output_rate=16000, partial_interval_ms=500, llm_prefill=True)


def test_stable_words_drop_the_last_word() -> None:
    assert stable_words("could you please tell") == "could you please"
    assert stable_words("could") == ""
    assert stable_words("  ") == ""


def test_partials_prefill_the_words_heard_so_far_and_the_reply_prompt_extends_them() -> None:
    rec, s, llm = session_run(CFG, [quiet(0.5), tone(3.0), quiet(3.0)])
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(llm.prefills) >= 3, "one prefill per partial transcript"
    stop = rec.of(E.UserSpeechStopped)[0]
    reply = llm.requests[0]
    for req, upto, t in llm.prefills:
        assert t <= stop.t + 0.1, "no prefill once the turn is over"
        heard = len(words_for(t).split())  # a partial hears the audio from the session start (>= onset - 2 s)
        assert upto.split() == WORDS[:len(upto.split())] and len(upto.split()) < heard, \
            "the words of a partial, less the last"
        assert req.messages[-1].content == upto and req.messages[-1].role == "user"
        # the prefilled prompt is the reply's own: same system prompt and history, same tools
        assert req.messages[:-1] == reply.messages[:-1]
        assert req.tools == reply.tools
        assert reply.messages[-1].content.startswith(upto)
    assert [u for _, u, _ in llm.prefills] == sorted((u for _, u, _ in llm.prefills), key=len)
    assert s.prefill.calls == len(llm.prefills) and s.prefill.evaluated > 0


def test_second_turn_prefills_with_the_first_exchange_in_the_history() -> None:
    rec, _, llm = session_run(CFG, [quiet(0.5), tone(2.0), quiet(4.0), tone(2.0), quiet(3.0)])
    assert len(rec.of(E.UserTurnEnded)) == 2 and len(llm.requests) == 2
    second = llm.requests[1]
    later = [req for req, _, t in llm.prefills if t > rec.of(E.UserTurnEnded)[0].t]
    assert later, "the second turn was prefilled too"
    for req in later:
        assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
        assert req.messages[:-1] == second.messages[:-1]


def test_off_no_prefill() -> None:
    _, s, llm = session_run(CFG.with_(llm_prefill=False), [quiet(0.5), tone(3.0), quiet(3.0)])
    assert llm.prefills == [] and s.prefill.calls == 0
    assert len(llm.requests) == 1


def test_no_partials_no_prefill() -> None:
    _, _, llm = session_run(CFG.with_(partial_interval_ms=0), [quiet(0.5), tone(3.0), quiet(3.0)])
    assert llm.prefills == [] and len(llm.requests) == 1


def test_history_prefill_once_per_turn_as_it_starts_with_the_replys_history() -> None:
    cfg = SessionConfig(output_rate=16000, partial_interval_ms=0, llm_prefill_history=True)
    rec, s, llm = session_run(cfg, [quiet(0.5), tone(2.0), quiet(4.0), tone(2.0), quiet(3.0)])
    assert len(rec.of(E.UserTurnEnded)) == 2 and len(llm.requests) == 2
    starts = [e.t for e in rec.of(E.UserSpeechStarted)]
    assert [u for _, u, _ in llm.prefills] == ["", ""], "one history prefill per turn, no words (no partials)"
    for (req, _, t), start, reply in zip(llm.prefills, starts, llm.requests, strict=True):
        assert start <= t < start + 0.2, "as the turn starts"
        assert req.messages[:-1] == reply.messages[:-1] and req.messages[-1].role == "user"
    assert [m.role for m in llm.prefills[1][0].messages] == ["system", "user", "assistant", "user"]
    assert s.prefill.calls == 2 and s.prefill.evaluated == 10


def test_history_prefill_off_by_default_on_when_set(monkeypatch) -> None:
    from moksori.engine.config import config_from_settings
    from moksori.settings import load_settings

    _, s, llm = session_run(SessionConfig(output_rate=16000, partial_interval_ms=0), [quiet(0.5), tone(2.0), quiet(3.0)])
    assert llm.prefills == [] and s.prefill.calls == 0
    monkeypatch.delenv("MOKSORI_LLM_PREFILL_HISTORY", raising=False)
    assert config_from_settings(load_settings()).llm_prefill_history is False
    monkeypatch.setenv("MOKSORI_LLM_PREFILL_HISTORY", "on")
    assert config_from_settings(load_settings()).llm_prefill_history is True


def test_phone_calls_and_other_sessions_are_counted_together() -> None:
    """The telephony routes' stack (the shared one with a phrase cache in front of its TTS) counts
    its calls with the server's other sessions: a phone call and a WebSocket session are two."""
    from moksori.telephony.phrases import stack_for_calls

    stack = fake_stack(llm=PrefillRecordingLLM())
    phone, _ = stack_for_calls(stack)

    async def main() -> list[int]:
        web = Session(stack, CFG.with_(llm_prefill="alone"))
        call = Session(phone, CFG.with_(llm_prefill="alone"))
        counts = [stack.live_sessions(), phone.live_sessions(), int(web.prefill.enabled), int(call.prefill.enabled)]
        await web.close()
        counts += [phone.live_sessions(), int(call.prefill.enabled)]
        await call.close()
        return counts

    assert run_virtual(main()) == [2, 2, 0, 0, 1, 1]


def test_an_llm_without_a_prompt_cache_is_a_clean_no_op() -> None:
    """A remote LLM has nothing to prefill: `on` then neither calls its `prefill` nor asks for
    live partials (each would be a Whisper decode for nothing)."""
    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(by_duration=words_for), llm=ScriptedLLM()),  # no `prefill` of its own
                    CFG.with_(partials="auto"))
        rec = await play_into_session(s, [quiet(0.5), tone(3.0), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run_virtual(main())
    assert s.prefill.calls == 0 and s.partials.decodes == 0
    assert not rec.of(E.ErrorEvent)
    assert len([e for e in rec.of(E.AgentResponseDone) if e.status == "completed"]) == 1


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """The one-at-a-time provider (`llm.parallel=1`), whose single KV cache these tests follow;
    the batched one's prefill goes to a conversation's slot (tests/test_llm_batched.py)."""
    from speech import prepared_data_dir

    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.registry import build_llm
    from moksori.settings import load_settings

    settings = load_settings(data_dir=prepared_data_dir(tmp_path_factory))
    llm = build_llm(settings.model_copy(update={"llm": settings.llm.model_copy(update={"parallel": 1})})).providers[0]
    assert type(llm) is LlamaCppLLM
    return llm


SYSTEM = "You are a helpful voice assistant. Answer in one short sentence."
SAID = "Could you please tell me when the next train to the city leaves tonight?"


def req(text: str) -> ChatRequest:
    from moksori.providers.base import Message

    return ChatRequest(messages=(Message("system", SYSTEM), Message("user", text)), temperature=0.0, max_tokens=12)


async def reply_of(llm, request: ChatRequest):
    from moksori.providers.base import TextDelta, Usage

    text, usage = "", None
    async for ev in llm.chat(request):
        if isinstance(ev, TextDelta):
            text += ev.text
        elif isinstance(ev, Usage):
            usage = ev
    return text, usage


@pytest.mark.models
async def test_llamacpp_prefill_is_reused_and_changes_nothing(llm) -> None:
    from moksori.providers.base import Message

    other = ChatRequest(messages=(Message("system", "Something else entirely."), Message("user", "Hi")), max_tokens=1)
    await reply_of(llm, other)  # the cache holds an unrelated prompt
    plain, u_plain = await reply_of(llm, req(SAID))
    assert u_plain is not None and u_plain.cached_tokens < 10

    await reply_of(llm, other)
    partial = "Could you please tell me when the next"
    n = await llm.prefill(req(partial), partial)
    assert n > 10  # the system prompt and the words: no earlier prompt shared them
    assert await llm.prefill(req(partial), partial) == 0  # all in the cache already
    prefilled, u_pre = await reply_of(llm, req(SAID))
    assert u_pre is not None and u_pre.input_tokens == u_plain.input_tokens
    # everything up to the partial's last word came from the cache; only the rest was evaluated
    assert u_pre.cached_tokens >= n
    assert u_pre.input_tokens - u_pre.cached_tokens <= 16
    assert prefilled == plain, "a reply after a prefill is the reply without one (temperature 0)"

    # a partial the final transcript contradicts: the common prefix is reused, the reply is right
    await llm.prefill(req("Could you please tell me where"), "Could you please tell me where")
    after_wrong, u_wrong = await reply_of(llm, req(SAID))
    assert after_wrong == plain
    assert u_wrong is not None and u_wrong.cached_tokens < u_pre.cached_tokens


@pytest.mark.models
async def test_llamacpp_history_prefill_leaves_only_the_words_and_changes_nothing(llm) -> None:
    from moksori.providers.base import Message

    first, _ = await reply_of(llm, req("Hello there, who are you?"))  # the cache ends inside this reply

    def second() -> ChatRequest:
        return ChatRequest(messages=(Message("system", SYSTEM), Message("user", "Hello there, who are you?"),
                                     Message("assistant", first.strip()), Message("user", SAID)),
                           temperature=0.0, max_tokens=12)

    plain, u_plain = await reply_of(llm, second())
    await reply_of(llm, req("Hello there, who are you?"))  # the same state again
    n = await llm.prefill_history(second())
    assert n >= 3  # at least <|im_start|>user\n, and whatever of the reply re-renders differently
    assert await llm.prefill_history(second()) == 0  # all in the cache already
    prefilled, u_pre = await reply_of(llm, second())
    assert u_plain is not None and u_pre is not None and u_pre.input_tokens == u_plain.input_tokens
    words = llm.count_tokens(SAID)
    # left after the cache: the words and the template's tail (<|im_end|>\n<|im_start|>assistant\n)
    assert u_pre.input_tokens - u_pre.cached_tokens <= words + 6
    assert u_pre.input_tokens - u_pre.cached_tokens < u_plain.input_tokens - u_plain.cached_tokens
    assert prefilled == plain, "a reply after a history prefill is the reply without one (temperature 0)"
    assert await llm.prefill_history(ChatRequest(messages=())) == 0


@pytest.mark.models
async def test_llamacpp_prefill_never_waits_for_a_busy_model(llm) -> None:
    words = "Could you please tell me"
    with llm._lock:  # a reply (of any session) is being generated
        assert await asyncio.wait_for(llm.prefill(req(words), words), 5) == 0
    assert await llm.prefill(req("  "), "  ") == 0
    assert await llm.prefill(req(words), "words that are not in the prompt") == 0


def test_setting_reaches_the_session_config(monkeypatch) -> None:
    from moksori.engine.config import config_from_settings, prefill_mode
    from moksori.providers.cpu import detect
    from moksori.settings import load_settings

    # the default, auto: alone on a CPU without an int8 dot product, else off
    assert prefill_mode("auto", int8_dot=False) == "alone" and prefill_mode("auto", int8_dot=True) is False
    monkeypatch.delenv("MOKSORI_LLM_PREFILL", raising=False)
    assert config_from_settings(load_settings()).llm_prefill == (False if detect().has_int8_dot else "alone")
    for env, mode in (("on", True), ("off", False), ("alone", "alone"), ("true", True)):
        monkeypatch.setenv("MOKSORI_LLM_PREFILL", env)
        assert config_from_settings(load_settings()).llm_prefill == mode, env
    monkeypatch.setenv("MOKSORI_LLM_PREFILL", "sometimes")
    with pytest.raises(Exception, match="prefill"):
        load_settings()


def test_alone_prefills_only_while_no_other_session_is_live() -> None:
    """`alone`: a second live session on the same models (a second caller, even a silent one)
    stops the first one's prefill, and the partials decoded only for it; closing it brings both back."""
    llm = PrefillRecordingLLM()
    stack = fake_stack(stt=ScriptedSTT(by_duration=words_for), llm=llm)
    cfg = CFG.with_(llm_prefill="alone", partials="auto")  # partials only for a reader: the prefill
    turn = [quiet(0.5), tone(3.0), quiet(3.0)]

    async def main() -> list[tuple[int, int]]:
        first = Session(stack, cfg)
        counts = []

        async def one_turn() -> None:
            before = (len(llm.prefills), first.partials.decodes)
            await play_into_session(first, turn)
            await settle(first)
            counts.append((len(llm.prefills) - before[0], first.partials.decodes - before[1]))

        await one_turn()
        other = Session(stack, cfg)
        assert stack.live_sessions() == 2
        await one_turn()
        await other.close()
        assert stack.live_sessions() == 1
        await one_turn()
        await first.close()
        assert stack.live_sessions() == 0
        return counts

    alone, together, again = run_virtual(main())
    assert alone[0] >= 3 and alone[1] >= 3, alone
    assert together == (0, 0), "no prefill, and no partial decoded for it, while another session is live"
    assert again[0] >= 3 and again[1] >= 3, again
    assert len(llm.requests) == 3, "every turn was answered"


class SlowPrefillLLM(PrefillRecordingLLM):
    """A stand-in whose prefill steps take 0.4 s (a step queued behind other work), and that
    records the ones cancelled before they finished."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.cancelled: list[float] = []

    async def prefill(self, request: ChatRequest, upto: str) -> int:
        loop = asyncio.get_running_loop()
        self.prefills.append((request, upto, loop.time()))
        try:
            await asyncio.sleep(0.4)
        except asyncio.CancelledError:
            self.cancelled.append(loop.time())
            raise
        return len(upto.split())


def test_alone_stops_a_prefill_under_way_when_a_second_session_opens() -> None:
    """`alone`: a second session opening mid-turn stops the first one's prefill at once, the
    step under way included, and none starts after it while both are open."""
    llm = SlowPrefillLLM()
    stack = fake_stack(stt=ScriptedSTT(by_duration=words_for), llm=llm)
    cfg = CFG.with_(llm_prefill="alone", partials="auto")
    turn = [quiet(0.5), tone(4.0), quiet(3.0)]

    async def main() -> tuple[float, Session]:
        first = Session(stack, cfg)
        playing = asyncio.create_task(play_into_session(first, turn))
        loop = asyncio.get_running_loop()
        while not llm.prefills or loop.time() - llm.prefills[-1][2] > 0.2:  # a step under way
            await asyncio.sleep(0.05)
        joined = loop.time()
        other = Session(stack, cfg)
        await playing
        await settle(first)
        await other.close()
        await first.close()
        return joined, first

    joined, first = run_virtual(main())
    assert llm.cancelled == [joined], "the step under way was stopped as the second session opened"
    assert all(t < joined for _, _, t in llm.prefills), "no prefill started while both were open"
    assert len(llm.requests) == 1, "the turn was answered"


@pytest.mark.models
async def test_llamacpp_prefill_stops_when_interactive_work_appears(llm, monkeypatch) -> None:
    """Between its 8-token steps the prefill checks for interactive jobs (a live STT, a reply or
    a synthesis, any session's): with one running it evaluates nothing, and the cache still
    serves the next request."""
    from moksori.providers import llm_llamacpp

    words = "Tell me a story about a lighthouse keeper and his dog"
    await reply_of(llm, req(SAID))  # another session's prompt is in the cache
    monkeypatch.setattr(llm_llamacpp, "interactive_running", lambda: 1)
    assert await llm.prefill(req(words), words) == 0
    monkeypatch.undo()
    _, usage = await reply_of(llm, req(SAID))
    assert usage is not None and usage.cached_tokens == usage.input_tokens, \
        "a prefill that yielded at once leaves the other prompt in the cache"
    steps = []
    real = llm_llamacpp.interactive_running

    def after_two_steps() -> int:  # interactive work arrives after the second step
        steps.append(1)
        return 1 if len(steps) > 2 else real()

    monkeypatch.setattr(llm_llamacpp, "interactive_running", after_two_steps)
    n = await llm.prefill(req(words + " please"), words + " please")
    assert 0 < n <= 2 * llm_llamacpp.PREFILL_BATCH
    monkeypatch.undo()
    text, usage = await reply_of(llm, req(words + " please."))
    assert text.strip() and usage is not None and usage.cached_tokens >= n


# --------------------------------------------------------------------------- fed by incremental STT


class IncrementalScriptedSTT(ScriptedSTT):
    """A scripted STT that incremental transcription may call again on pieces of a turn."""

    caps = STTCaps(incremental=True)


def inc_run(cfg: SessionConfig, audio) -> tuple:
    llm, stt = PrefillRecordingLLM(), IncrementalScriptedSTT(by_duration=words_for)

    async def main():
        s = Session(fake_stack(stt=stt, llm=llm, turn=FixedTurn(probability=0.05)), cfg)
        committed: list[str] = []
        hook = s.incremental.on_commit
        assert hook is not None, "the session hands incremental STT's commits to the prefill"

        def spy(turn_id: int, words: str) -> None:
            committed.append(words)
            hook(turn_id, words)

        s.incremental.on_commit = spy
        rec = await play_into_session(s, audio)
        await settle(s)
        await s.close()
        return rec, s, committed

    rec, s, committed = run_virtual(main())
    return rec, s, llm, committed


# speech, an internal pause (a candidate piece), more speech (its confirmation commits it)
PAUSED = [quiet(0.5), tone(2.0), quiet(0.3), tone(2.5), quiet(4.0)]


def test_incremental_commits_feed_the_prefill_without_partial_decodes() -> None:
    cfg = CFG.with_(stt_incremental=True, partials="auto")
    rec, s, llm, committed = inc_run(cfg, PAUSED)
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert s.incremental.commits >= 1 and committed, "the pause's piece was committed"
    assert s.partials.decodes == 0, "no live partial decoded: nothing but the prefill would read it"
    stop = rec.of(E.UserSpeechStopped)[0]
    reply = llm.requests[0]
    assert llm.prefills, "the committed words were prefilled"
    for req, upto, t in llm.prefills:
        assert upto in committed, "only committed words, all of them (no last word dropped)"
        assert t <= stop.t + 0.1
        assert req.messages[:-1] == reply.messages[:-1] and req.tools == reply.tools
        assert req.messages[-1] == Message("user", upto)
    assert reply.messages[-1].content.startswith(llm.prefills[0][1])


def test_incremental_without_prefill_neither_prefills_nor_decodes_partials() -> None:
    rec, s, llm, committed = inc_run(CFG.with_(stt_incremental=True, llm_prefill=False, partials="auto"), PAUSED)
    assert s.incremental.commits >= 1 and committed
    assert llm.prefills == [] and s.partials.decodes == 0


def test_incremental_and_another_reader_the_partials_feed_the_prefill_too() -> None:
    # a caption reader wants partials: their words (less the last) are prefilled as well
    rec, s, llm, committed = inc_run(CFG.with_(stt_incremental=True, partials="on"), PAUSED)
    assert s.partials.decodes > 0
    uptos = [u for _, u, _ in llm.prefills]
    assert any(u not in committed for u in uptos), "a partial's words were prefilled"
