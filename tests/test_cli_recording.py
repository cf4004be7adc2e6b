"""`moksori converse --user` records into the store, as `moksori chat --user` does, on real speech.

`moksori converse` runs as a user runs it (a subprocess) with the embedded speech models; its LLM
is `tests/scripted_llm_server.py` on loopback (the named stand-in for a smart model, which keeps
every request so the test reads what the agent was sent); the store is a real SQLite file, and on
PostgreSQL the same. Two runs with `--user`:

1. `../shared/speech/en/en_028.wav` ("I have a thousand thoughts about that thing"): the store
   then holds one conversation of the user, channel `cli`, with the transcript and the reply;
2. `en_002.wav` ("He was not an ill-disposed young man", no pause a turn detector could split): the first
   request the agent sends the LLM holds run 1's turn before the new one
   (the history was read from the store), and the user now has two conversations.

A run without `--user` is stored as anonymous; with `MOKSORI_STORE_URL=none` nothing is stored.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from databases import database
from realtime_speech import user_messages
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ThreadedASGIServer
from speech import prepared_data_dir, requires_speech, utt

from moksori.store import DEFAULT_TENANT, Store

pytestmark = [pytest.mark.models, requires_speech]


@pytest.fixture(scope="module")
def llm():
    scripted = ScriptedLLM()
    with ThreadedASGIServer(scripted.app) as srv:
        scripted.url = srv.url
        yield scripted


def converse(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moksori", "converse", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, env=env)


async def read_store(url: str, user: str | None) -> list[tuple[str, list[tuple[str | None, str]]]]:
    """(channel, [(role, text)]) of each conversation of `user` (all of `default`'s without one), oldest first."""
    store = Store(url, hash_secret=b"test")
    try:
        found = await store.list_conversations(DEFAULT_TENANT, user, order="asc", limit=100)
        out = []
        for conv in (found[0] if found else []):
            if user is None and conv.user is not None:
                continue
            got = await store.list_items(DEFAULT_TENANT, conv.id, order="asc", limit=100)
            assert got is not None
            out.append((conv.channel, [(i.role, i.spoken_text) for i in got[0] if i.type == "message"]))
        return out
    finally:
        await store.close_reads()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_converse_records_under_the_user_and_resumes_their_history(kind, llm, tmp_path, tmp_path_factory) -> None:
    data_dir = prepared_data_dir(tmp_path_factory)
    with database(kind, tmp_path) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
        env.update(MOKSORI_DATA_DIR=str(data_dir), MOKSORI_STORE_URL=url, MOKSORI_LLM_PROVIDER="openai",
                   MOKSORI_LLM_BASE_URL=llm.url + "/v1", MOKSORI_LLM_MODEL="scripted", MOKSORI_LANGUAGE="en",
                   COLUMNS="300", NO_COLOR="1", PYTHONWARNINGS="ignore")
        out = tmp_path / "reply.wav"

        first = converse([str(utt("en_028").path), "--out", str(out), "--user", "mina"], env, tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "saved as conversation" in first.stderr and "(user mina)" in first.stderr, first.stderr[-2000:]
        convs = asyncio.run(read_store(url, "mina"))
        assert len(convs) == 1, convs
        channel, turns = convs[0]
        assert channel == "cli"
        assert [r for r, _ in turns] == ["user", "assistant"], turns
        said = turns[0][1]
        assert "thousand" in said.lower(), said
        assert turns[1][1] == SHORT_REPLY

        before = len(llm.requests)
        second = converse([str(utt("en_002").path), "--out", str(out), "--user", "mina"], env, tmp_path)
        assert second.returncode == 0, second.stderr[-3000:]
        sent = user_messages(llm.requests[before])
        assert sent[:2] == [("user", said), ("assistant", SHORT_REPLY)], sent  # run 1, from the store
        assert sent[-1][0] == "user" and sent[-1][1] != said, sent
        convs = asyncio.run(read_store(url, "mina"))
        assert len(convs) == 2 and [r for r, _ in convs[1][1]] == ["user", "assistant"], convs

        anon = converse([str(utt("en_028").path), "--out", str(out)], env, tmp_path)
        assert anon.returncode == 0 and "(anonymous)" in anon.stderr, anon.stderr[-2000:]
        assert len(llm.requests[-1]["messages"]) == 2  # the system prompt and the turn: no one's history
        assert len(asyncio.run(read_store(url, None))) == 1
        assert "Traceback" not in first.stderr + second.stderr + anon.stderr


def test_converse_with_storage_off_stores_nothing(llm, tmp_path, tmp_path_factory) -> None:
    data_dir = prepared_data_dir(tmp_path_factory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
    env.update(MOKSORI_DATA_DIR=str(data_dir), MOKSORI_STORE_URL="none", MOKSORI_LLM_PROVIDER="openai",
               MOKSORI_LLM_BASE_URL=llm.url + "/v1", MOKSORI_LLM_MODEL="scripted", MOKSORI_LANGUAGE="en",
               COLUMNS="300", NO_COLOR="1")
    db = data_dir / "moksori.db"  # the default store (the data dir is shared by the test session)
    before = db.stat().st_mtime_ns if db.exists() else None
    r = converse([str(utt("en_028").path), "--out", str(tmp_path / "r.wav"), "--user", "mina"], env, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "saved as conversation" not in r.stderr and "not saved" not in r.stderr, r.stderr[-2000:]
    assert (db.stat().st_mtime_ns if db.exists() else None) == before
    assert len(llm.requests[-1]["messages"]) == 2  # no history either
