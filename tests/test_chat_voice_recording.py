"""`moksori chat --user` (voice) records into the store, on real speech.

These machines have no sound card, so the voice loop of `moksori chat` (`chat_cmd._voice_chat`)
gets `tests/sound_card.py`'s `WavSoundCard` in place of the `sounddevice` module: a stand-in for
the hardware that feeds a recording into the microphone callback at real-time pace and keeps
what reaches the speakers. Everything else is real: the embedded speech models, the session, the
recorder and the store (SQLite); the LLM is `tests/scripted_llm_server.py` (the named stand-in for
a smart model, which keeps every request).

1. user `hana` says `../shared/speech/en/en_028.wav` ("I have a thousand thoughts about that
   thing"); the agent answers through the speakers; the chat stops (Ctrl-C): the store holds one
   conversation of `hana`, channel `cli`, with the transcript and the reply;
2. `hana` again, with `en_002.wav`: the first request sent to the LLM holds turn 1 (from the store).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from realtime_speech import user_messages
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ThreadedASGIServer
from sound_card import WavSoundCard
from speech import prepared_data_dir, requires_speech, utt

from moksori.audio.wav import load_audio
from moksori.store import DEFAULT_TENANT, Store

pytestmark = [pytest.mark.models, requires_speech]

RATE = 48000  # what a sound card offers


async def chat_once(stack, settings, card: WavSoundCard, user: str, llm: ScriptedLLM, timeout: float = 120) -> None:
    """Run the voice chat until the agent has answered and gone quiet, then stop it as Ctrl-C does."""
    from moksori.cli.chat_cmd import _voice_chat

    before = len(llm.requests)
    task = asyncio.create_task(_voice_chat(stack, settings, card, None, None, False, user))
    deadline = time.monotonic() + timeout
    try:
        while not (card.input_done and len(llm.requests) > before and card.loud_at is not None
                   and time.monotonic() - card.loud_at > 1.5):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, f"no answer heard ({len(llm.requests) - before} LLM requests)"
            await asyncio.sleep(0.1)
    finally:
        task.cancel()  # what Ctrl-C does to the chat's loop: the session and the store close
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() or task.exception() is None


async def conversations(url: str, user: str) -> list[tuple[str, list[tuple[str | None, str]]]]:
    store = Store(url, hash_secret=b"test")
    try:
        found = await store.list_conversations(DEFAULT_TENANT, user, order="asc")
        out = []
        for conv in (found[0] if found else []):
            got = await store.list_items(DEFAULT_TENANT, conv.id, order="asc", limit=100)
            assert got is not None
            out.append((conv.channel, [(i.role, i.spoken_text) for i in got[0] if i.type == "message"]))
        return out
    finally:
        await store.close_reads()


def speech(name: str) -> np.ndarray:
    pcm = load_audio(utt(name).path, rate=RATE).samples
    return np.concatenate([np.zeros(RATE // 2, dtype=np.int16), pcm])


def test_voice_chat_with_user_is_recorded_and_resumed(monkeypatch, tmp_path, tmp_path_factory) -> None:
    from moksori.cli.ui import load_stack
    from moksori.settings import load_settings

    data_dir = prepared_data_dir(tmp_path_factory)
    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        for k, v in {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_STORE_URL": url, "MOKSORI_CONFIG": "",
                     "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": srv.url + "/v1",
                     "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LANGUAGE": "en"}.items():
            monkeypatch.setenv(k, v)
        settings = load_settings()
        stack = load_stack(settings)

        asyncio.run(two_chats(stack, settings, url, llm))  # one loop, as in one `moksori chat` process


async def two_chats(stack, settings, url: str, llm: ScriptedLLM) -> None:
    card = WavSoundCard(speech("en_028"), RATE)
    await chat_once(stack, settings, card, "hana", llm)
    assert card.played_seconds > 0.5  # the agent was heard
    convs = await conversations(url, "hana")
    assert len(convs) == 1, convs
    channel, turns = convs[0]
    assert channel == "cli" and [r for r, _ in turns] == ["user", "assistant"], convs
    said = turns[0][1]
    assert "thousand" in said.lower() and turns[1][1] == SHORT_REPLY, turns

    before = len(llm.requests)
    await chat_once(stack, settings, WavSoundCard(speech("en_002"), RATE), "hana", llm)
    sent = user_messages(llm.requests[before])
    assert sent[:2] == [("user", said), ("assistant", SHORT_REPLY)], sent
    assert sent[-1][0] == "user" and "young man" in sent[-1][1].lower(), sent
    assert len(await conversations(url, "hana")) == 2
