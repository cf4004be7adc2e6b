"""A Realtime client whose network vanishes mid-reply: the reply is stored as heard up to the
last moment the client was known alive, not up to when the server noticed.

A real `moksori serve` (the embedded speech models, the scripted LLM stand-in
`tests/scripted_llm_server.py`, SQLite store) with a quick keepalive (a ping every 2 s, 3 s to
answer); the official `openai` Realtime client reaches it through a TCP proxy on loopback
(`tests/tcp_proxy.py`) that freezes: no close frame, no FIN, nothing either way. The client
streams silence as a microphone does (so it is known alive until the network goes), asks for
LONG_REPLY (~15 s of speech) twice: the first plays in full (its audio length and word count
give the reply's speaking rate), the second is frozen after two seconds of its audio arrived.
The server notices 3-5 s later (the keepalive). The stored heard part must match the audio the
client actually received, within about a second's words, where counting what the clock says
played until the server noticed would add the 3-5 s (10-16 words) on top.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time

import numpy as np
import openai
import pytest
from databases import database
from realtime_speech import RATE, Client, b64
from scripted_llm_server import LONG_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech
from tcp_proxy import TCPProxy

pytestmark = [pytest.mark.models, requires_speech]

KEY = "sk-vanished-client-1"
PING_S, PONG_S = 2.0, 3.0
FREEZE_AFTER_MS = 2000.0  # of the second reply's audio received
MARGIN_S = 1.0  # the speaker's 200 ms lead, a clause's rounding, loopback and proxy lag


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv_llm, database("sqlite", tmp_path_factory.mktemp("db")) as url:
        port = free_port()
        argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
        env = {"MOKSORI_DATA_DIR": str(prepared_data_dir(tmp_path_factory)), "MOKSORI_API_KEYS": KEY,
               "MOKSORI_STORE_URL": url, "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": srv_llm.url + "/v1",
               "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LANGUAGE": "en", "MOKSORI_CONFIG": "",
               "MOKSORI_SERVER_WS_PING_INTERVAL_S": str(PING_S), "MOKSORI_SERVER_WS_PING_TIMEOUT_S": str(PONG_S),
               "PYTHONUNBUFFERED": "1"}
        with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=240, env=env,
                           cwd=tmp_path_factory.mktemp("serve")) as srv:
            yield srv


def audio_ms(c: Client, response_id: str) -> float:
    n = sum(len(base64.b64decode(e["delta"])) // 2 for e in c.events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id)
    return 1000.0 * n / RATE


async def microphone(c: Client) -> None:
    """100 ms of silence every 100 ms, as a client with an open microphone sends."""
    chunk = b64(np.zeros(RATE // 10, dtype=np.int16))
    while True:
        await c.conn.input_audio_buffer.append(audio=chunk)
        await asyncio.sleep(0.1)


async def ask(c: Client) -> dict:
    """A typed turn and a reply to it; the reply's `response.created`."""
    before = sum(e["type"] == "response.created" for e in c.events)
    await c.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                "content": [{"type": "input_text", "text": "Tell me a story."}]})
    await c.conn.response.create()
    deadline = time.monotonic() + 120
    while True:
        created = [e for e in c.events if e["type"] == "response.created"]
        if len(created) > before:
            return created[before]
        assert time.monotonic() < deadline and not c.closed, "no response.created"
        await asyncio.sleep(0.02)


def test_the_heard_part_stops_when_the_client_was_last_heard_from(server):
    net = TCPProxy("127.0.0.1", server.port).start()  # the client's network
    api = openai.OpenAI(api_key=KEY, base_url=server.url + "/v1", max_retries=0)

    def replies(conv_id: str) -> list:
        return [i for i in api.conversations.items.list(conv_id, order="asc") if i.role == "assistant"]

    async def main() -> tuple[list, float, float]:
        c = await Client.open(net.port, KEY, user="vanishing")
        mic: asyncio.Task | None = None
        try:
            await c.setup(instructions="scripted:long")
            mic = asyncio.create_task(microphone(c))
            # 1. a reply heard in full: how long LONG_REPLY takes to say
            first = (await ask(c))["response"]["id"]
            await c.wait("response.done", lambda e: e["response"]["id"] == first, timeout=120)
            full_ms = audio_ms(c, first)
            # 2. the same reply; the network vanishes two seconds into its audio
            created = await ask(c)
            second, conv_id = created["response"]["id"], created["response"]["conversation_id"]
            deadline = time.monotonic() + 120
            while audio_ms(c, second) < FREEZE_AFTER_MS:
                assert time.monotonic() < deadline and not c.closed, "the second reply never played"
                await asyncio.sleep(0.01)
            net.freeze()  # no close frame, no FIN: nothing more either way (the client stays open)
            received_ms = audio_ms(c, second)
            mic.cancel()
            deadline = time.monotonic() + 60  # the keepalive notices within PING_S + PONG_S
            while not (len(got := await asyncio.to_thread(replies, conv_id)) == 2 and got[1].status == "incomplete"):
                assert time.monotonic() < deadline, [(i.status, i.content[0].text) for i in got]
                await asyncio.sleep(0.25)
            return got, full_ms, received_ms
        finally:
            if mic is not None:
                mic.cancel()
            net.stop()  # drops the frozen connection before the client is closed
            await c.close()

    got, full_ms, received_ms = asyncio.run(main())
    whole, cut = got[0].content[0].text, got[1].content[0].text
    assert whole == LONG_REPLY and got[0].status == "completed"
    assert LONG_REPLY.startswith(cut) and cut.strip(), cut
    words_per_s = len(LONG_REPLY.split()) / (full_ms / 1000)
    # what the client received when its network went, within a second's words; the clock's count
    # until the keepalive noticed would be PONG_S to PING_S + PONG_S later (10-16 words more)
    most = words_per_s * (received_ms / 1000 + MARGIN_S)
    least = words_per_s * (received_ms / 1000 - MARGIN_S)
    print(f"reply {full_ms / 1000:.1f} s, {words_per_s:.1f} words/s; received {received_ms:.0f} ms before the "
          f"network vanished; stored as heard: {len(cut.split())} words ({least:.1f}-{most:.1f} expected)")
    assert least <= len(cut.split()) <= most, cut
