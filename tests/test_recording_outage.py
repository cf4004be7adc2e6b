"""A database that is down when `moksori serve` starts: the sessions of the outage are recorded
all the same, and land in order once it answers.

PostgreSQL is reached through a TCP proxy on loopback (`tests/tcp_proxy.py`) that refuses every
connection at first. A real `moksori serve` (the embedded speech models; its LLM the scripted
stand-in, `tests/scripted_llm_server.py`) starts on it: the store cannot start and is retried in
the background. Meanwhile the official `openai` Realtime client holds a session with `?user=`:
a spoken turn of real recorded speech (`../shared/speech/en/en_028.wav`) and a typed one, both
answered. `/metrics` shows the records queued (`moksori_store_pending`, `moksori_store_up 0`).
Then the proxy accepts again: the server migrates the database, writes the queue, and the
Conversations API (the `openai` SDK) reads the conversation with every turn, in order.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

import httpx
import openai
import pytest
from databases import postgres_database
from realtime_speech import Client, speech_pcm
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech
from tcp_proxy import TCPProxy

pytestmark = [pytest.mark.models, requires_speech]

KEY = "sk-outage-key"


def metrics(srv: ServerProcess) -> dict[str, float]:
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    out: dict[str, float] = {}
    for m in re.finditer(r'^(moksori_(?:store|recorded)_\w+)(\{[^}]*\})? ([0-9.e+-]+)$', text, re.M):
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_sessions_of_a_start_up_outage_are_recorded_when_the_database_answers(tmp_path_factory) -> None:
    data_dir = prepared_data_dir(tmp_path_factory)
    llm = ScriptedLLM()
    with postgres_database() as url, ThreadedASGIServer(llm.app) as llm_srv:
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        host, pg_port = host_port.rsplit(":", 1) if ":" in host_port else (host_port, "5432")
        proxy = TCPProxy(host, int(pg_port)).start()
        proxy.cut()  # refuses connections: the database is "down" as the server starts
        port = free_port()
        env = {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": KEY,
               "MOKSORI_STORE_URL": url.replace(host_port, f"127.0.0.1:{proxy.port}"),
               "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": llm_srv.url + "/v1",
               "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LANGUAGE": "en", "MOKSORI_CONFIG": "",
               "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
        try:
            with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=240, env=env,
                               cwd=tmp_path_factory.mktemp("serve")) as srv:
                assert srv.wait_for_log("store: unavailable")
                conv_id, said = asyncio.run(session_in_the_outage(srv))
                m = metrics(srv)
                assert m["moksori_store_up"] == 0
                # the conversation, 2 user turns, 2 replies at least (usage rows may come too)
                assert m["moksori_store_pending"] >= 5, m
                assert m['moksori_recorded_total{kind="conversation"}'] == 1, m
                api = openai.OpenAI(api_key=KEY, base_url=srv.url + "/v1", max_retries=0)
                with pytest.raises(openai.InternalServerError):  # 503: the store is not up yet
                    api.conversations.retrieve(conv_id)

                proxy.restore()  # the database answers again
                deadline = time.monotonic() + 60  # the start-up retry backs off up to 30 s
                while True:
                    try:
                        conv = api.conversations.retrieve(conv_id)
                        items = list(api.conversations.items.list(conv_id, order="asc"))
                        if len([i for i in items if i.type == "message"]) >= 4:
                            break
                    except (openai.InternalServerError, openai.NotFoundError):
                        pass
                    assert time.monotonic() < deadline, "the queued records never landed"
                    time.sleep(0.5)
                assert conv.metadata["user"] == "outage-user" and conv.metadata["channel"] == "realtime"
                messages = [(i.role, i.content[0].text) for i in items if i.type == "message"]
                assert messages == [("user", said), ("assistant", SHORT_REPLY),
                                    ("user", "And what about tomorrow?"), ("assistant", SHORT_REPLY)], messages
                m = metrics(srv)
                assert m["moksori_store_up"] == 1 and m["moksori_store_pending"] == 0, m
                assert m['moksori_store_dropped_total{reason="buffer_full"}'] == 0, m
                assert m["moksori_store_written_total"] == sum(
                    v for k, v in m.items() if k.startswith("moksori_recorded_total")), m
                assert srv.wait_for_log("writing")  # "available again; writing N records queued"
                assert "Traceback" not in srv.log_text()
        finally:
            proxy.stop()


async def session_in_the_outage(srv: ServerProcess) -> tuple[str, str]:
    c = await Client.open(srv.port, KEY, user="outage-user")
    try:
        await c.setup()
        feeder = asyncio.create_task(c.speak(speech_pcm()))
        done = await c.wait("response.done", lambda e: e["response"]["status"] == "completed", timeout=120)
        said = (await c.wait("conversation.item.input_audio_transcription.completed", timeout=10))["transcript"]
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        n = len([e for e in c.events if e["type"] == "response.done"])
        await c.conn.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "And what about tomorrow?"}]})
        await c.conn.response.create()
        await wait_count(c, "response.done", n + 1)
        assert "thousand" in said.lower(), said
        await asyncio.sleep(0.3)
        return done["response"]["conversation_id"], said
    finally:
        await c.close()


async def wait_count(c: Client, typ: str, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in c.events if e["type"] == typ]
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline and not c.closed, f"no {n} {typ}: {[e['type'] for e in c.events][-20:]}"
        await asyncio.sleep(0.05)
