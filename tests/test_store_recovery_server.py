"""Real server processes (`tests/stale_server.py`: the real app served as `moksori serve` serves
it, fake fast models, its LLM the context-telling stand-in) on real PostgreSQL, and Redis for the
cluster; the official `openai` Realtime client types the turns, the `openai` SDK reads the
Conversations API.

1. One server killed with SIGKILL mid-reply (its progress in the store, `in_progress`): its next
   run finalizes the reply as `incomplete` with the heard part last written.
2. Three cluster workers (real Redis, short TTL): the one holding a reply is killed with SIGKILL
   mid-reply; the reply stays `in_progress` while it lives, and once its registry entry expires
   the two others finalize it, once between them.
3. The database goes away (a loopback proxy the test cuts) during a session; the server is
   stopped cleanly (SIGTERM): the queued records are spooled to its data dir and written by the
   next start, none twice.
4. A server started while the database is away: the user's session starts without history, and
   once the database answers the history is loaded before the next reply (the stand-in LLM says
   what it was sent).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal

import httpx
import openai
import pytest
from databases import PG_DSN, postgres_database
from redis_tools import REDIS_URL, delete_prefix_sync, new_prefix, redis_available
from stale_server import LONG_REPLY
from stale_tools import TypedClient, stale_server, wait_for
from tcp_proxy import TCPProxy

KEY = "sk-recovery-1"


def api(srv) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=srv.url + "/v1", max_retries=0)


def reply_item(srv, conv: str):
    try:
        items = list(api(srv).conversations.items.list(conv, order="asc"))
    except (openai.NotFoundError, openai.InternalServerError):
        return None
    found = [i for i in items if i.type == "message" and i.role == "assistant"]
    return found[0] if found else None


async def long_reply_playing(port: int, user: str) -> tuple[TypedClient, str]:
    c = await TypedClient.open(port, KEY, user)
    mark = await c.say("Tell me a long story.")
    created = await c.wait("response.created", after=mark)
    await c.wait("response.output_audio.delta", after=mark, timeout=30)
    return c, created["response"]["conversation_id"]


def kill9(srv) -> None:
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)


def in_progress(srv, conv: str):
    it = reply_item(srv, conv)
    return it if it is not None and it.status == "in_progress" and it.content[0].text else None


def test_a_reply_a_killed_server_left_in_progress_is_finalized_by_its_next_run(tmp_path) -> None:
    data = tmp_path / "data"
    with postgres_database() as db:
        env = {"MOKSORI_STORE_URL": db, "MOKSORI_API_KEYS": KEY}
        srv = stale_server(env, data).start()
        try:
            async def main() -> tuple[str, str]:
                c, conv = await long_reply_playing(srv.port, "crash-user")
                playing = await asyncio.to_thread(wait_for, lambda: in_progress(srv, conv), "the reply in progress")
                kill9(srv)  # mid-reply: nothing ends the reply
                await c.close()
                return conv, playing.content[0].text

            conv, heard = asyncio.run(main())
        finally:
            srv.stop()
        assert LONG_REPLY.startswith(heard) and heard != LONG_REPLY
        again = stale_server(env, data).start()
        try:
            it = reply_item(again, conv)
            assert it is not None and it.status == "incomplete", it
            text = it.content[0].text
            # what was heard as last written: at least what the test saw, never the whole reply
            assert LONG_REPLY.startswith(text) and len(text) >= len(heard) and text != LONG_REPLY, text
            assert again.wait_for_log("finalized as incomplete")
            assert "Traceback" not in again.log_text()
        finally:
            again.stop()


@pytest.mark.skipif(not redis_available(), reason="Redis is not reachable")
def test_a_dead_cluster_workers_reply_is_finalized_by_the_live_ones(tmp_path) -> None:
    prefix = new_prefix()
    with postgres_database() as db:
        env = {"MOKSORI_REDIS_URL": REDIS_URL, "MOKSORI_REDIS_PREFIX": prefix, "MOKSORI_STORE_URL": db,
               "MOKSORI_TELEPHONY_STREAM_SECRET": "recovery-secret", "MOKSORI_API_KEYS": KEY,
               "MOKSORI_CLUSTER_HEARTBEAT_S": "0.5", "MOKSORI_CLUSTER_TTL_S": "2"}
        workers = [stale_server({**env, "MOKSORI_CLUSTER_WORKER_ID": f"w{i}"}, tmp_path / f"w{i}") for i in range(3)]
        try:
            for w in workers:
                w.start()
            doomed, others = workers[0], workers[1:]

            async def main() -> tuple[str, str]:
                c, conv = await long_reply_playing(doomed.port, "cluster-crash-user")
                seen = await asyncio.to_thread(wait_for, lambda: in_progress(others[0], conv), "the reply in progress")
                # the holder is alive: two reaper rounds of the others (every 2 s) leave its reply alone
                await asyncio.sleep(4.5)
                still = reply_item(others[1], conv)
                assert still is not None and still.status == "in_progress", still
                kill9(doomed)
                await c.close()
                return conv, seen.content[0].text

            conv, heard = asyncio.run(main())
            it = wait_for(lambda: (x := reply_item(others[1], conv)) is not None and x.status == "incomplete" and x,
                          "the reply finalized by a live worker", timeout=60)
            text = it.content[0].text
            assert LONG_REPLY.startswith(text) and len(text) >= len(heard) and text != LONG_REPLY, text
            done = []
            for w in others:
                done += [int(n) for n in re.findall(r"store: (\d+) replies left in progress", w.log_text())]
            assert sum(done) == 1, done  # once, between them
            for w in others:
                assert "Traceback" not in w.log_text()
        finally:
            for w in workers:
                w.stop()
            delete_prefix_sync(prefix)


def metrics(srv) -> str:
    return httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text


def test_the_queue_of_an_outage_survives_a_clean_stop_and_history_comes_back_late(tmp_path) -> None:
    data = tmp_path / "data"
    spool = data / "store-spool"  # (one database: its files are the only ones)
    user = f"spool-{secrets.token_hex(4)}"
    host, port = PG_DSN.split("@", 1)[1].split(":")
    with postgres_database() as db, TCPProxy(host, int(port)) as proxy:
        env = {"MOKSORI_STORE_URL": db.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}"),
               "MOKSORI_API_KEYS": KEY}
        # 1. a turn stored; then the database goes away during a second session, and the server stops
        srv = stale_server(env, data).start()
        try:
            async def before() -> str:
                c = await TypedClient.open(srv.port, KEY, user)
                try:
                    text, _ = await c.turn("First words of mine.")
                    assert text == "Context: First words of mine.", text
                finally:
                    await c.close()
                proxy.cut()
                c = await TypedClient.open(srv.port, KEY, user)
                try:
                    _, resp = await c.turn("Said while the database was down.")
                finally:
                    await c.close()
                return resp["conversation_id"]

            conv = asyncio.run(before())
            wait_for(lambda: re.search(r"^moksori_store_pending [1-9]", metrics(srv), re.M), "records queued")
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)  # drain, then the store closes: the queue goes to the spool
            assert srv.proc.wait(60) in (0, -signal.SIGTERM)  # (uvicorn re-raises the signal once it is done)
            assert "spooled to" in srv.log_text()
        finally:
            srv.stop()
        assert len(list(spool.glob("pending-*.jsonl"))) == 1

        # 2. the database is still away at the next start: the spool is queued, the user's new
        # session starts without history and gets it once the database answers
        again = stale_server(env, data).start()
        try:
            assert again.wait_for_log("store: unavailable", timeout_s=30)
            assert again.wait_for_log("records spooled by an earlier run", timeout_s=10)

            async def during() -> tuple[str, str, str]:
                c = await TypedClient.open(again.port, KEY, user)
                try:
                    early, _ = await c.turn("What do you remember?")
                    proxy.restore()
                    await asyncio.to_thread(again.wait_for_log, "is in from the next reply", timeout_s=90)
                    late, resp = await c.turn("And now?")
                finally:
                    await c.close()
                return early, late, resp["conversation_id"]

            early, late, third_conv = asyncio.run(during())
            assert early == "Context: What do you remember?", early
            assert late.startswith("Context: First words of mine. | ") and "Said while the database was down." in late \
                and late.endswith("What do you remember? | And now?"), late
            # the spooled records were written, once, and the file is gone
            wait_for(lambda: not list(spool.glob("pending-*.jsonl")), "the spool written")
            client = api(again)
            msgs = [(i.role, i.content[0].text) for i in client.conversations.items.list(conv, order="asc")
                    if i.type == "message"]
            # (that session's own start could not load the history either: the database was down)
            assert msgs == [("user", "Said while the database was down."),
                            ("assistant", "Context: Said while the database was down.")], msgs
            listed = httpx.get(f"{again.url}/v1/conversations", params={"user": user},
                               headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()["data"]
            assert len(listed) == 3 and third_conv in {x["id"] for x in listed}
            usage = httpx.get(f"{again.url}/v1/conversations/{conv}/usage",
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
            assert [t["kind"] for t in usage["turns"]] == ["reply"], usage  # the spooled reply's usage, once
            assert "Traceback" not in again.log_text()
        finally:
            again.stop()
