"""Outages under `make cluster`: PostgreSQL going away mid-conversation, and a client whose network
vanishes mid-reply.

`scripts/cluster.py up` (what `make cluster` runs) starts nginx and 2 real `moksori serve` workers
(the embedded speech models) on Redis and on PostgreSQL reached through a TCP proxy on loopback
(`tests/tcp_proxy.py`) that the test can cut; their LLM is `tests/scripted_llm_server.py` (the
named stand-in for a smart model). Clients are the official `openai` Realtime client, through
nginx, speaking real recorded speech (`../shared/speech/en`: en_028, en_002, sentences without pauses).

1. PostgreSQL unreachable for a bounded time: a spoken turn is stored; the database is cut (every
   connection dropped, new ones refused); a second spoken turn and a typed one are answered as
   usual while the holding worker's `/metrics` shows the records queued; the database comes back;
   every turn lands, in order, read through the Conversations API of the *other* worker.
2. A client's network vanishes mid-reply (its connection goes through a proxy that stops
   forwarding: no close frame, no FIN). The user reconnects through nginx a second later, lands
   on the other worker, and the first prompt sent to the LLM holds the reply as heard so far (the
   reply's progress is written every second while it plays). The old worker's WebSocket
   keepalive (default ping every 5 s, 5 s to answer) then notices, the session ends and the reply
   is stored, within 12 s, as interrupted, heard up to the client's last message.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

import httpx
import pytest
from cluster_tools import running_cluster
from realtime_speech import Client, speech_pcm, user_messages
from scripted_llm_server import LONG_REPLY, SHORT_REPLY, ScriptedLLM
from servers import ThreadedASGIServer
from speech import requires_speech
from tcp_proxy import TCPProxy

pytestmark = [pytest.mark.slow, pytest.mark.models, requires_speech]

KEY = "sk-cluster-outages-1"
TYPED = "And what about tomorrow?"


@pytest.fixture(scope="module")
def llm():
    scripted = ScriptedLLM()
    with ThreadedASGIServer(scripted.app) as srv:
        scripted.url = srv.url
        yield scripted


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, llm):
    proxies: list[TCPProxy] = []

    def through_proxy(db: str) -> str:
        host_port = db.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1) if ":" in host_port else (host_port, "5432")
        proxies.append(TCPProxy(host, int(port)).start())
        return db.replace(host_port, f"127.0.0.1:{proxies[0].port}")

    try:
        with running_cluster(tmp_path_factory, KEY, {
                "CLUSTER_LLM_URL": llm.url, "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LANGUAGE": "en",
                "MOKSORI_CONFIG": "", "MOKSORI_CLUSTER_HEARTBEAT_S": "1", "MOKSORI_CLUSTER_TTL_S": "3"},
                store_url=through_proxy) as c:
            c["llm"], c["db_proxy"] = llm, proxies[0]
            yield c
    finally:
        for p in proxies:
            p.stop()


def call(method: str, url: str, path: str) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def worker_url(state: dict[str, Any], i: int) -> str:
    return f"http://127.0.0.1:{state['worker_ports'][i]}"


def holder(cluster: dict[str, Any]) -> int | None:
    """The index of the one worker that holds one session (None unless exactly that)."""
    r = call("GET", cluster["url"], "/v1/cluster")
    assert r.status_code == 200, r.text
    counts = {w["pid"]: w["sessions"] for w in r.json()["workers"]}
    pids = [w["pid"] for w in cluster["state"]["workers"]]
    if sorted(counts.values()) != [0, 1]:
        return None
    return next(k for k, pid in enumerate(pids) if counts.get(pid) == 1)


def store_metrics(url: str) -> dict[str, float]:
    text = call("GET", url, "/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(moksori_store_\w+) ([0-9.e+-]+)$", text, re.M)}


async def until(check, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.2)


def done_count(c: Client) -> int:
    return len([e for e in c.events if e["type"] == "response.done" and e["response"]["status"] == "completed"])


async def spoken(c: Client, utterance: str) -> str:
    """Speak `utterance` until a reply completes; the last final transcript."""
    n, heard = done_count(c), len([e for e in c.events if e["type"].endswith("transcription.completed")])
    feeder = asyncio.create_task(c.speak(speech_pcm(utterance)))
    try:
        await until(lambda: done_count(c) > n, f"a reply to {utterance}", 120)
        await until(lambda: len([e for e in c.events if e["type"].endswith("transcription.completed")]) > heard,
                    "its transcript", 10)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    return [e for e in c.events if e["type"].endswith("transcription.completed")][-1]["transcript"]


def messages(url: str, conv: str) -> list[tuple[str, str, str]]:
    r = call("GET", url, f"/v1/conversations/{conv}/items?order=asc&limit=100")
    if r.status_code != 200:
        return []
    return [(i["role"], i["content"][0]["text"], i["status"]) for i in r.json()["data"] if i["type"] == "message"]


async def test_postgresql_away_mid_conversation_loses_no_turn(cluster):
    user = f"outage-{secrets.token_hex(6)}"
    st, proxy = cluster["state"], cluster["db_proxy"]
    c = await Client.open(cluster["port"], KEY, user=user)
    try:
        await c.setup()
        first = await spoken(c, "en_028")
        conv = c.events[[e["type"] for e in c.events].index("response.done")]["response"]["conversation_id"]
        i = await until(lambda: holder(cluster), "the session in the registry")
        held, other = worker_url(st, i), worker_url(st, 1 - i)
        await until(lambda: len(messages(other, conv)) >= 2, "the first turn stored")

        proxy.cut()  # PostgreSQL unreachable: open connections dropped, new ones refused
        t_cut = time.monotonic()
        try:
            second = await spoken(c, "en_002")  # the reply goes on
            n = done_count(c)
            await c.conn.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": TYPED}]})
            await c.conn.response.create()
            await until(lambda: done_count(c) > n, "a reply to the typed turn", 60)
            queued = await until(lambda: (m := store_metrics(held))["moksori_store_pending"] >= 4 and m, "records queued")
            assert queued["moksori_store_up"] == 0, queued
            assert call("GET", other, f"/v1/conversations/{conv}").status_code == 503  # reads say so, clearly
        finally:
            proxy.restore()
        outage_s = time.monotonic() - t_cut

        want = [("user", first), ("assistant", SHORT_REPLY), ("user", second), ("assistant", SHORT_REPLY),
                ("user", TYPED), ("assistant", SHORT_REPLY)]
        stored = await until(lambda: (got := messages(other, conv)) and len(got) >= 6 and got,
                             "every turn stored after the outage", 30)
        assert [(r, t) for r, t, _ in stored] == want, stored
        m = store_metrics(held)
        assert m["moksori_store_up"] == 1 and m["moksori_store_pending"] == 0, m
        assert m["moksori_store_write_failures_total"] >= 1, m  # the writes did fail, and were retried
        print(f"outage {outage_s:.1f} s; failures {m['moksori_store_write_failures_total']:.0f}")
    finally:
        await c.close()
    assert call("DELETE", cluster["url"], f"/v1/users/{user}").status_code == 200


async def test_a_client_gone_silent_mid_reply_has_it_stored_within_seconds(cluster):
    user = f"vanish-{secrets.token_hex(6)}"
    st, llm = cluster["state"], cluster["llm"]
    pids = [w["pid"] for w in st["workers"]]
    net = TCPProxy("127.0.0.1", cluster["port"]).start()  # the client's network
    c: Client | None = None
    try:
        c = await Client.open(net.port, KEY, user=user)
        await c.setup(instructions="scripted:long")
        feeder = asyncio.create_task(c.speak(speech_pcm(pad_s=8.0)))
        await c.wait("response.output_audio.delta", timeout=120)
        conv = (await c.wait("response.created"))["response"]["conversation_id"]
        i = await until(lambda: holder(cluster), "the session in the registry")
        await asyncio.sleep(2.0)  # about two seconds of a fifteen-second reply
        net.freeze()  # the network vanishes: no close frame, no FIN, nothing more either way
        t_gone = time.monotonic()
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        other = worker_url(st, 1 - i)

        # 1. the user comes back at once (another network), before the old worker can notice:
        # the new session is on the other worker, and its prompt holds the reply as heard so far
        await asyncio.sleep(1.0)
        before = len(llm.requests)
        c2 = await Client.open(cluster["port"], KEY, user=user)
        try:
            await c2.setup()
            t_back = time.monotonic() - t_gone
            r = call("GET", cluster["url"], "/v1/cluster").json()["workers"]
            assert {w["pid"]: w["sessions"] for w in r}.get(pids[1 - i]) == 1, r
            await spoken(c2, "en_002")
        finally:
            await c2.close()
        sent = user_messages(llm.requests[before])
        partial = [t for role, t in sent if role == "assistant" and t and LONG_REPLY.startswith(t)]
        assert partial and len(partial[0]) < len(LONG_REPLY), sent
        print(f"back {t_back:.1f} s after the network vanished: the prompt holds "
              f"{len(partial[0].split())} heard words of the reply still in flight")

        # 2. the old worker notices (keepalive) and writes the reply as it ended: interrupted
        def ended() -> tuple[str, str, str] | None:
            got = [m for m in messages(other, conv) if m[0] == "assistant" and m[2] == "incomplete"]
            return got[0] if got else None

        _, heard, status = await until(ended, "the interrupted reply stored", 30)
        stored_after = time.monotonic() - t_gone
        print(f"interrupted reply stored {stored_after:.1f} s after the client's network vanished; "
              f"heard part {len(heard.split())} of {len(LONG_REPLY.split())} words")
        # the default keepalive: a ping every 5 s, 5 s for its answer (plus the write, ~50 ms)
        assert stored_after < 12.0, stored_after
        # heard up to the client's last message (it streamed audio until the network went), not
        # up to when the keepalive noticed, up to ten seconds later; the progress the new session
        # read was written at most a second past that
        assert heard.strip() and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY), heard
        assert len(heard.split()) <= len(partial[0].split()) + 4, (heard, partial[0])
        assert len([m for m in messages(other, conv) if m[0] == "assistant"]) == 1  # replaced, not added
    finally:
        net.stop()  # drops the frozen connection: the old client sees it closed
        if c is not None:
            await c.close()
    assert call("DELETE", cluster["url"], f"/v1/users/{user}").status_code == 200
