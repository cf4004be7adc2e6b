"""The first clause's cap reaches the chunker from the session's config (virtual time, scripted
fakes standing in for the models: only which text goes to TTS first is under test)."""

from __future__ import annotations

import pytest

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, ToneTTS, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual

REPLY = "A more amiable woman might have made him still more respectable than he was in those days."


def _first_clause(cfg: SessionConfig) -> tuple[str, list[str], str]:
    tts = ToneTTS()

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["tell me."]), llm=ScriptedLLM(REPLY), tts=tts), cfg)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run_virtual(main())
    started = rec.of(E.TtsStarted)
    done = [e for e in rec.of(E.AgentResponseDone) if e.status == "completed"]
    assert len(started) == 1 and len(done) == 1
    return started[0].text, tts.texts, done[0].text


@pytest.mark.parametrize(("cap", "first"), [(50, "A more amiable woman might have made him still"),
                                            (24, "A more amiable woman"), (32, "A more amiable woman might have")])
def test_session_config_caps_the_first_clause(cap: int, first: str) -> None:
    text, spoken, reply = _first_clause(SessionConfig(output_rate=16000, partial_interval_ms=0,
                                                      first_clause_max_chars=cap))
    assert text == first and len(text) <= cap
    assert spoken[0] == first
    # every word is still spoken, once, in order
    assert " ".join(spoken).split() == REPLY.split() and reply == REPLY


def test_default_cap_is_fifty_characters() -> None:
    assert SessionConfig().first_clause_max_chars == 50


def test_session_config_ramps_the_clauses_after_the_first() -> None:
    _, spoken, _ = _first_clause(SessionConfig(output_rate=16000, partial_interval_ms=0,
                                               first_clause_max_chars=12, first_clause_ramp=True))
    assert [len(c) <= cap for c, cap in zip(spoken, (12, 24, 48))] == [True, True, True]
    _, plain, _ = _first_clause(SessionConfig(output_rate=16000, partial_interval_ms=0,
                                              first_clause_max_chars=12))
    assert len(plain) < len(spoken)  # without the ramp the rest goes out in one piece
    assert " ".join(spoken).split() == " ".join(plain).split() == REPLY.split()


def test_settings_reach_the_session_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from moksori.engine.config import config_from_settings
    from moksori.errors import ConfigError
    from moksori.settings import load_settings

    monkeypatch.setenv("MOKSORI_TTS_FIRST_CLAUSE_MAX_CHARS", "24")
    monkeypatch.setenv("MOKSORI_TTS_FIRST_CLAUSE_RAMP", "true")
    cfg = config_from_settings(load_settings())
    assert (cfg.first_clause_max_chars, cfg.first_clause_ramp) == (24, True)
    monkeypatch.setenv("MOKSORI_TTS_FIRST_CLAUSE_MAX_CHARS", "-1")
    with pytest.raises(ConfigError, match="first_clause_max_chars"):
        load_settings()


class _QuietStartTTS(ToneTTS):
    """A tone after 50 ms of -60 dBFS hiss, as Piper starts every sentence (a scripted stand-in:
    only where the first sound falls is under test)."""

    async def synthesize(self, text, opts):
        import numpy as np

        from moksori.audio.frames import Frame

        async for frame in super().synthesize(text, opts):
            hiss = 0.001 * np.random.default_rng(1).standard_normal(self.rate // 20)
            yield Frame.from_float(np.concatenate([hiss, frame.to_float()]), self.rate)


def test_the_first_clause_starts_with_sound_the_next_ones_keep_their_pause() -> None:
    import numpy as np

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["tell me."]), llm=ScriptedLLM("Sure, here it is. And more words."),
                               tts=_QuietStartTTS()), SessionConfig(output_rate=16000, partial_interval_ms=0))
        audio: list = []
        s.bus.listen(lambda ev: audio.append(ev) if isinstance(ev, E.AgentAudio) else None)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0)])
        await settle(s)
        await s.close()
        return audio

    chunks = run_virtual(main())
    samples = np.concatenate([c.frame.samples for c in chunks])
    first_loud = int(np.argmax(np.abs(samples) > 1000))
    assert 0 < first_loud <= 16000 * 12 // 1000  # ~10 ms of lead-in kept, not 50
    # the next clauses keep their 50 ms: a quiet stretch of at least 45 ms inside the reply
    loud = np.abs(samples) > 1000
    runs = np.diff(np.flatnonzero(loud))
    assert runs.max() >= 16000 * 45 // 1000


def test_first_clause_pause_now_pauses_the_llm_stream_while_the_clause_is_synthesised() -> None:
    """`first_clause_pause="now"`: the reply's LLM stream runs inside `threads.paced_by`, whose
    event is cleared from the moment the first clause is complete until its audio is made (a
    local model's thread stops before its next token); "max_ahead" (the default) leaves the
    stream to its own backpressure."""
    from moksori.providers import threads

    class PacedLLM(ScriptedLLM):
        go: object = "unread"

        async def chat(self, request):
            self.go = threads._go.get()  # what iterate_blocking would read as the stream starts
            async for ev in super().chat(request):
                yield ev

    class ProbeTTS(ToneTTS):
        def __init__(self, llm: PacedLLM) -> None:
            super().__init__()
            self.llm = llm
            self.seen: list[bool | None] = []

        async def synthesize(self, text, opts):
            go = self.llm.go
            self.seen.append(go.is_set() if go is not None and not isinstance(go, str) else None)
            async for f in super().synthesize(text, opts):
                yield f

    def run(pause: str) -> tuple[object, list[bool | None], str]:
        llm = PacedLLM(REPLY)
        tts = ProbeTTS(llm)

        async def main():
            cfg = SessionConfig(output_rate=16000, partial_interval_ms=0, first_clause_pause=pause)
            s = Session(fake_stack(stt=ScriptedSTT(["tell me."]), llm=llm, tts=tts), cfg)
            rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0)])
            await settle(s)
            await s.close()
            return rec

        rec = run_virtual(main())
        done = [e for e in rec.of(E.AgentResponseDone) if e.status == "completed"]
        assert len(done) == 1
        return llm.go, tts.seen, done[0].text

    go, seen, reply = run("now")
    assert go is not None and not isinstance(go, str)
    assert seen[0] is False, "the first clause's TTS starts with the LLM paused"
    assert go.is_set(), "and the LLM goes on once its audio is made"  # type: ignore[attr-defined]
    assert reply == REPLY
    go, seen, reply = run("max_ahead")
    assert go is None and seen[0] is None and reply == REPLY


def test_first_clause_pause_setting_reaches_the_session_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from moksori.engine.config import config_from_settings
    from moksori.errors import ConfigError
    from moksori.settings import load_settings

    assert config_from_settings(load_settings()).first_clause_pause == "max_ahead"
    monkeypatch.setenv("MOKSORI_TTS_FIRST_CLAUSE_PAUSE", "now")
    assert config_from_settings(load_settings()).first_clause_pause == "now"
    monkeypatch.setenv("MOKSORI_TTS_FIRST_CLAUSE_PAUSE", "soon")
    with pytest.raises(ConfigError, match="first_clause_pause"):
        load_settings()
