"""Live sessions recorded by a real `moksori serve`, on real SQLite and real PostgreSQL.

The server runs the embedded speech models (Silero, smart-turn, Whisper base, Piper) with API
keys; its LLM is `tests/scripted_llm_server.py` on loopback (a deterministic OpenAI-compatible
server that records every request, so the test can read the prompt the agent got). The client
is the official `openai` SDK's Realtime client, speaking real recorded speech
(`../shared/speech/en/en_028.wav`, "I have a thousand thoughts about that thing") at real-time
pace with `?user=` / `X-Moksori-User`. After the reply, the server is killed with SIGKILL and
started again on the same database: the Conversations API (read with the `openai` SDK) shows
the conversation, and the user's next session starts with it in the agent's context. Another
key sees none of it. A phone call through the simulated carrier is stored under the caller's
hashed number; a client that vanishes mid-reply leaves the reply stored as interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from carrier_sim import CarrierSim
from databases import database
from scripted_llm_server import LONG_REPLY, SHORT_REPLY, ScriptedLLM
from realtime_speech import Client, speech_pcm, user_messages
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech, utt

from moksori.audio.frames import Frame
from moksori.audio.wav import load_audio
from moksori.telephony.signatures import make_stream_token

pytestmark = [pytest.mark.models, requires_speech]

K1, K2 = "sk-record-key-one", "sk-record-key-two"
STREAM_SECRET = "stream-secret-for-recording-tests"
CALLER = "+82 10-1234-5678"


# --------------------------------------------------------------------------- servers


class World:
    """One database, and the `moksori serve` on it (which the test kills and starts again)."""

    def __init__(self, url: str, data_dir: Any, cwd: Any, llm: ScriptedLLM) -> None:
        self.url, self.data_dir, self.cwd, self.llm = url, data_dir, cwd, llm
        self.server: ServerProcess | None = None

    def start(self) -> ServerProcess:
        port = free_port()
        argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
        env = {"MOKSORI_DATA_DIR": str(self.data_dir), "MOKSORI_API_KEYS": f"{K1},{K2}",
               "MOKSORI_STORE_URL": self.url, "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": self.llm.url,
               "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LANGUAGE": "en", "MOKSORI_CONFIG": "",
               "MOKSORI_TELEPHONY_STREAM_SECRET": STREAM_SECRET, "MOKSORI_PUBLIC_URL": "https://voice.example.test",
               "MOKSORI_TELEPHONY_OWNER_KEY": K1,  # phone calls are K1's
               "PYTHONUNBUFFERED": "1"}
        self.server = ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, env=env,
                                    cwd=self.cwd).start()
        return self.server

    def live(self) -> ServerProcess:
        return self.server if self.server is not None and self.server.proc.poll() is None else self.start()

    def kill9(self) -> None:
        assert self.server is not None
        os.kill(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait(10)
        self.server.stop()
        self.server = None


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory, scripted_llm):
    data_dir = prepared_data_dir(tmp_path_factory)
    with database(request.param, tmp_path_factory.mktemp("db")) as url:
        w = World(url, data_dir, tmp_path_factory.mktemp("serve"), scripted_llm)
        try:
            yield w
        finally:
            if w.server is not None:
                w.server.stop()


def rest(srv: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=srv.url + "/v1", max_retries=0)


def get(srv: ServerProcess, path: str, key: str = K1) -> tuple[int, Any]:
    r = httpx.get(srv.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def wait_for(check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


# --------------------------------------------------------------------------- the story


def test_spoken_session_survives_kill9_and_comes_back_as_history(world: World) -> None:
    srv = world.start()

    async def first_session() -> tuple[str, dict[str, Any]]:
        c = await Client.open(srv.port, K1, user="alice")
        try:
            await c.setup()
            feeder = asyncio.create_task(c.speak(speech_pcm()))
            done = await c.wait("response.done", lambda e: e["response"]["status"] == "completed", timeout=90)
            transcript = await c.wait("conversation.item.input_audio_transcription.completed", timeout=5)
            feeder.cancel()
            await asyncio.sleep(0.5)  # the batched writer commits within ~50 ms
            return transcript["transcript"], done["response"]
        finally:
            # kill -9 while the client is still connected: nothing waits for a clean close
            world.kill9()
            await c.close()

    said, response = asyncio.run(first_session())
    assert "thousand" in said.lower(), said
    conv_id = response["conversation_id"]
    assert response["status"] == "completed"
    usage = response["usage"]  # the GA shape
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    details = usage["input_token_details"]
    assert set(details) >= {"cached_tokens", "text_tokens", "audio_tokens", "cached_tokens_details"}
    assert details["text_tokens"] == usage["input_tokens"] and details["audio_tokens"] == 0

    srv = world.start()  # a new process on the same database
    api = rest(srv, K1)
    conv = api.conversations.retrieve(conv_id)
    assert conv.metadata["user"] == "alice" and conv.metadata["channel"] == "realtime"
    items = list(api.conversations.items.list(conv_id, order="asc"))
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant")]
    assert items[0].content[0].type == "input_text" and items[0].content[0].text == said
    assert items[1].content[0].type == "output_text" and items[1].content[0].text == SHORT_REPLY
    status, listed = get(srv, "/v1/conversations?user=alice")
    assert status == 200 and [c["id"] for c in listed["data"]] == [conv_id]
    status, turns = get(srv, f"/v1/conversations/{conv_id}/usage")
    assert status == 200 and turns["total"]["input_tokens"] > 0 and turns["total"]["stt_seconds"] > 1.0
    assert turns["total"]["tts_seconds"] > 0.5

    # another key: the conversation and the user do not exist for it
    other = rest(srv, K2)
    with pytest.raises(openai.NotFoundError):
        other.conversations.retrieve(conv_id)
    with pytest.raises(openai.NotFoundError):
        list(other.conversations.items.list(conv_id))
    assert get(srv, "/v1/conversations?user=alice", K2)[0] == 404

    # alice's next session (the user id in the header this time): the agent's prompt holds it
    async def second_session() -> str:
        before = len(world.llm.requests)
        c = await Client.open(srv.port, K1, user="alice", header=True)
        try:
            await c.setup()
            feeder = asyncio.create_task(c.speak(speech_pcm("en_021")))
            # (a pause may split the speech: a reply to its first part can be cut by the rest)
            done = await c.wait("response.done", lambda e: e["response"]["status"] == "completed", timeout=90)
            feeder.cancel()
            assert len(world.llm.requests) > before
            sent = user_messages(world.llm.requests[before])
            assert sent[:2] == [("user", said), ("assistant", SHORT_REPLY)], sent
            assert sent[-1][0] == "user" and sent[-1][1] != said
            return done["response"]["conversation_id"]
        finally:
            await c.close()

    second = asyncio.run(second_session())
    assert second != conv_id
    wait_for(lambda: len(get(srv, "/v1/conversations?user=alice")[1]["data"]) == 2, "two conversations of alice")

    # the same user id under the other key is another user: no history
    async def other_key_session() -> None:
        before = len(world.llm.requests)
        c = await Client.open(srv.port, K2, user="alice")
        try:
            await c.setup()
            feeder = asyncio.create_task(c.speak(speech_pcm()))
            await c.wait("response.done", lambda e: e["response"]["status"] == "completed", timeout=90)
            feeder.cancel()
            assert [r for r, _ in user_messages(world.llm.requests[before])] == ["user"]
        finally:
            await c.close()

    asyncio.run(other_key_session())
    status, metrics = 200, urllib.request.urlopen(urllib.request.Request(
        srv.url + "/metrics", headers={"Authorization": f"Bearer {K1}"}), timeout=10).read().decode()
    counted = {m.group(1): int(m.group(2)) for m in re.finditer(r'moksori_recorded_total\{kind="(\w+)"\} (\d+)', metrics)}
    # two sessions on this server (a pause may split one's speech into two turns)
    assert counted["conversation"] == 2 and counted["user_turn"] >= 2 and counted["reply"] >= 2, counted
    assert "moksori_store_up 1" in metrics and "moksori_store_write_failures_total 0" in metrics


def test_a_client_gone_mid_reply_leaves_it_stored_as_interrupted(world: World) -> None:
    srv = world.live()

    async def main() -> str:
        c = await Client.open(srv.port, K1, user="bob")
        await c.setup(instructions="scripted:long")
        feeder = asyncio.create_task(c.speak(speech_pcm(pad_s=8.0)))
        await c.wait("response.output_audio.delta", timeout=90)
        created = await c.wait("response.created")
        await asyncio.sleep(2.0)  # about two seconds of a fifteen-second reply
        feeder.cancel()
        await c.conn.close()  # the client vanishes mid-reply
        await c.close()
        return created["response"]["conversation_id"]

    conv_id = asyncio.run(main())
    api = rest(srv, K1)

    def reply():
        items = [i for i in api.conversations.items.list(conv_id, order="asc") if i.role == "assistant"]
        return items[0] if items else None

    item = wait_for(reply, "the interrupted reply")
    heard = item.content[0].text
    assert item.status == "incomplete"
    assert heard and LONG_REPLY.startswith(heard) and len(heard.split()) < len(LONG_REPLY.split()) // 2, heard


def test_a_phone_call_is_stored_under_the_callers_hashed_number(world: World) -> None:
    srv = world.live()
    call_id = f"CA{time.time_ns():032x}"[:34]

    async def main() -> None:
        tok = make_stream_token(STREAM_SECRET.encode(), call_id, carrier="twilio", now=int(time.time()))
        url = f"ws://127.0.0.1:{srv.port}/telephony/twilio/stream"
        async with CarrierSim.connect(url, call_id=call_id, params={"token": tok, "from": CALLER,
                                                                    "to": "+15557654321"}) as call:
            await call.start()
            await call.wait_audio(timeout=10)  # the greeting
            await call.wait_quiet(quiet_s=0.3)
            stamps = await call.speak(Frame(load_audio(utt("tel_001").path_8k).samples, 8000))
            await call.wait_audio(after=stamps[-1], timeout=60)
            await call.wait_quiet(quiet_s=0.5, timeout=60)
            await call.hang_up()

    asyncio.run(main())

    def phone_conversations(key: str) -> list[dict[str, Any]]:
        status, listed = get(srv, "/v1/conversations?limit=100", key)
        assert status == 200
        return [c for c in listed["data"] if c["metadata"].get("channel") == "phone"]

    phone = wait_for(lambda: phone_conversations(K1), "the stored call")
    assert phone_conversations(K2) == []  # the owner key's calls only
    assert len(phone) == 1 and phone[0]["metadata"]["carrier"] == "twilio"
    user = phone[0]["metadata"]["user"]
    digits = "".join(ch for ch in CALLER if ch.isdigit())
    assert user.startswith("tel:") and digits not in user and "12345678" not in user
    assert get(srv, f"/v1/conversations?user={user}")[0] == 200  # listed by the hashed id
    api = rest(srv, K1)

    def items():
        its = list(api.conversations.items.list(phone[0]["id"], order="asc"))
        return its if len(its) >= 3 else None

    its = wait_for(items, "the call's turns")
    assert [(i.type, getattr(i, "role", None)) for i in its[:2]] == [("message", "assistant"), ("message", "user")]
    assert its[0].content[0].text == "Hello! How can I help you?"  # the greeting
    assert its[1].content[0].text.strip()
    # the scripted LLM calls the first tool it is offered: the phone's end_call, a server tool
    calls = [i for i in its if i.type == "function_call"]
    outputs = [i for i in its if i.type == "function_call_output"]
    assert calls and calls[0].name == "end_call", its
    assert outputs and outputs[0].call_id == calls[0].call_id and json.loads(outputs[0].output)["ok"] is True
    # the number itself is nowhere in the database
    if world.url.startswith("sqlite"):
        db = Path(world.url.split("///", 1)[1])
        raw = b"".join(f.read_bytes() for f in (db, db.with_name(db.name + "-wal")) if f.exists())
        assert b"tel:" in raw and digits.encode() not in raw and CALLER.encode() not in raw


def test_a_malformed_user_id_is_refused_with_a_clear_reason(world: World) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    srv = world.live()

    async def ws() -> int:
        try:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/realtime?model=moksori&user=not%20valid!",
                               additional_headers={"Authorization": f"Bearer {K1}"}):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    assert asyncio.run(ws()) == 403  # refused at the handshake, before any session exists
    r = httpx.post(srv.url + "/v1/realtime/calls", content=b"v=0\r\n", timeout=10,
                   headers={"Authorization": f"Bearer {K1}", "Content-Type": "application/sdp",
                            "X-Moksori-User": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_user", r.text


def test_an_item_the_client_deletes_leaves_the_stored_conversation(world: World) -> None:
    """conversation.item.delete used to reach only the live session: the stored history kept the
    item, and the next session's history brought it back."""
    srv = world.live()

    async def main() -> None:
        c = await Client.open(srv.port, K1, user="carol")
        await c.setup()
        for item_id, text in (("item_keep", "Please remember the blue door."), ("item_gone", "My PIN is 4321.")):
            await c.conn.conversation.item.create(item={"id": item_id, "type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": text}]})
            await c.wait("conversation.item.added", lambda e, i=item_id: e["item"]["id"] == i, timeout=10)
        await c.conn.conversation.item.delete(item_id="item_gone")
        await c.wait("conversation.item.deleted", lambda e: e["item_id"] == "item_gone", timeout=10)
        await c.close()

    asyncio.run(main())

    def stored():
        status, body = get(srv, "/v1/conversations?user=carol")
        if status != 200 or not body["data"]:
            return None
        conv_id = body["data"][0]["id"]
        status, items = get(srv, f"/v1/conversations/{conv_id}/items?order=asc")
        ids = [i["id"] for i in items["data"]] if status == 200 else []
        return ids if "item_keep" in ids else None

    assert wait_for(stored, "the kept item") == ["item_keep"]
