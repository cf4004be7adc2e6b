"""What the store keeps when processes die or stop during an outage, on real SQLite and real
PostgreSQL (made unreachable through a loopback proxy the test cuts):

* replies left `in_progress` by a dead process are finalized as incomplete with the heard part
  last written: by any live cluster worker (owners not in the registry), two of them at once
  finalizing each reply once, and the dead-looking owner's own ending still landing; by the next
  run of a single server (the same data dir's instance, another boot), never another live
  server's on that data dir;
* the writer's queue survives a clean stop while the database is down (a spool file in the data
  dir), is written first at the next start, and a spool replayed twice adds nothing twice;
* the spool codec round-trips every record type; a bad spool line is skipped with a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from databases import PG_DSN, database, postgres_database
from moksori.accounting import TurnUsage
from moksori.store import (
    AgentReply,
    ConversationStarted,
    ItemDeleted,
    MCPCallRecord,
    ReplyHeard,
    ReplyProgress,
    Store,
    SummaryUpdated,
    ToolCallRecord,
    ToolResultRecord,
    UsageRecord,
    UserTurn,
    UserTurnRemoved,
)
from moksori.store.db import make_engine
from moksori.store.migrate import upgrade
from moksori.store.models import usage
from moksori.store.spool import Spool, database_key, decode, encode
from tcp_proxy import TCPProxy


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    with database(request.param, tmp_path) as u:
        yield u


def make_store(url: str, **kw) -> Store:
    return Store(url, hash_secret=b"test-secret", **kw)


async def item(store: Store, conv: str, item_id: str):
    return await store.get_item("t", conv, item_id)


async def usage_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(usage))).scalar() or 0)
    finally:
        await engine.dispose()


# ------------------------------------------------------------------ replies a dead process left


async def test_any_live_worker_finalizes_a_dead_workers_reply_once(url) -> None:
    dead, live_a, live_b = (make_store(url) for _ in range(3))
    dead.set_owner("worker-dead")
    live_a.set_owner("worker-a")
    live_b.set_owner("worker-b")
    for s in (dead, live_a, live_b):
        await s.start()
    now = time.time()
    dead.submit(ConversationStarted("c", "t", "u", "realtime", now))
    dead.submit(UserTurn("c", "u1", "Tell me a story.", now + 1))
    dead.submit(ReplyProgress("c", "a1", "Once upon", now + 2))
    dead.submit(ReplyProgress("c", "a1", "Once upon a time", now + 3))
    live_a.submit(ConversationStarted("c2", "t", "v", "realtime", now))
    live_a.submit(ReplyProgress("c2", "b1", "Still playing", now + 2))
    assert await dead.flush(20) and await live_a.flush(20)

    # worker-dead is not in the registry any more: both live workers finalize at once
    live = {"worker-a", "worker-b"}
    counts = await asyncio.gather(live_a.finalize_orphans(live), live_b.finalize_orphans(live))
    assert sorted(counts) == [0, 1]
    a1 = await item(live_a, "c", "a1")
    assert a1 is not None
    assert (a1.status, a1.interrupted, a1.spoken_text) == ("incomplete", True, "Once upon a time")
    b1 = await item(live_a, "c2", "b1")  # a live worker's reply is left alone
    assert b1 is not None and b1.status == "in_progress"
    assert await live_b.finalize_orphans(live) == 0  # again: nothing

    # worker-dead was alive after all (cut off from Redis): its late progress changes nothing,
    # its own ending of the reply lands
    dead.submit(ReplyProgress("c", "a1", "Once upon a time there", now + 4))
    assert await dead.flush(20)
    a1 = await item(live_a, "c", "a1")
    assert a1 is not None and (a1.status, a1.spoken_text) == ("incomplete", "Once upon a time")
    dead.submit(AgentReply("c", "a1", "Once upon a time there was a fox.", now + 5, response_id="r1",
                           replaces_progress=True))
    assert await dead.flush(20)
    a1 = await item(live_a, "c", "a1")
    assert a1 is not None and (a1.status, a1.text, a1.interrupted) == (
        "completed", "Once upon a time there was a fox.", False)
    for s in (dead, live_a, live_b):
        await s.close()


async def test_the_next_run_of_a_server_finalizes_what_a_crash_left(url, tmp_path) -> None:
    data = tmp_path / "data"
    first = make_store(url)
    owner = first.claim_local_owner(data)
    await first.start()
    now = time.time()
    first.submit(ConversationStarted("c", "t", "u", "realtime", now))
    first.submit(ReplyProgress("c", "a1", "Half of it", now + 1))
    assert await first.flush(20)
    # a second server on the same data dir while the first runs: it takes nothing of the first's
    other = make_store(url)
    assert other.claim_local_owner(data).split("/")[0] != owner.split("/")[0]
    await other.start()
    assert other.finalized == 0
    a1 = await item(other, "c", "a1")
    assert a1 is not None and a1.status == "in_progress"
    await other.close()
    # the first one "dies" (its instance lock goes with it); its next run finalizes the reply
    assert first._local is not None
    first._local.close()
    second = make_store(url)
    again = second.claim_local_owner(data)
    assert again.split("/")[0] == owner.split("/")[0] and again != owner
    await second.start()
    assert second.finalized == 1
    a1 = await item(second, "c", "a1")
    assert a1 is not None and (a1.status, a1.interrupted, a1.spoken_text) == ("incomplete", True, "Half of it")
    assert await second.finalize_earlier_runs() == 0  # idempotent
    await second.close()
    await first.writer.aclose()


# ------------------------------------------------------------------ the queue across a clean stop


def records(conv: str, now: float) -> list:
    u = TurnUsage(llm_model="m", input_tokens=100, output_tokens=10)
    return [
        ConversationStarted(conv, "t", "u", "realtime", now, metadata={"k": "v"}),
        UserTurn(conv, "u1", "Hello there.", now + 1, language="en", latency={"stt_ms": 120.0},
                 usage=TurnUsage(stt_model="s", stt_seconds=1.5)),
        ReplyProgress(conv, "a1", "Hi", now + 1.5, response_id="r1"),
        AgentReply(conv, "a1", "Hi, how can I help?", now + 2, heard_text="Hi, how", interrupted=True,
                   response_id="r1", usage=u, replaces_progress=True),
        ToolCallRecord(conv, "f1", "call1", "weather", '{"city": "Seoul"}', now + 3),
        ToolResultRecord(conv, "f2", "call1", '{"temp": 3}', now + 3.5, name="weather"),
        MCPCallRecord(conv, "m1", "call2", "docs", "search", "{}", "nothing", now + 4, ok=False),
        ReplyHeard(conv, "a1", "Hi", now + 5),
        UserTurnRemoved(conv, "u1", "[removed]", now + 6),
        UsageRecord(conv, u, now + 7, kind="summary"),
        SummaryUpdated(conv, "They said hello.", "u1", now + 8, extra={"n": 1}),
        UserTurn(conv, "x1", "Forget I said this.", now + 9),
        ItemDeleted(conv, "x1", now + 10),  # a client deleted it: never stored for good
    ]


def test_the_spool_codec_round_trips_every_record(tmp_path, caplog) -> None:
    recs = records("c", 1000.0)
    assert {type(r).__name__ for r in recs} == {
        "ConversationStarted", "UserTurn", "ReplyProgress", "AgentReply", "ToolCallRecord", "ToolResultRecord",
        "MCPCallRecord", "ReplyHeard", "UserTurnRemoved", "UsageRecord", "SummaryUpdated", "ItemDeleted"}
    assert [decode(json.loads(json.dumps(encode(r)))) for r in recs] == recs
    spool = Spool(tmp_path / "spool")
    path = spool.save(recs)
    assert path is not None
    with open(path, "a", encoding="utf-8") as f:
        f.write("not json\n" + json.dumps({"type": "Nope"}) + "\n")
    with caplog.at_level(logging.ERROR, logger="moksori.store"):
        assert Spool(tmp_path / "spool").claim(5) == recs[:5]
    assert "2 unreadable lines" in caplog.text and "8 spooled records dropped" in caplog.text


async def test_the_queue_survives_a_stop_while_the_database_is_down() -> None:
    host, port = PG_DSN.split("@", 1)[1].split(":")
    with postgres_database() as url, TCPProxy(host, int(port)) as proxy:
        import tempfile

        spool_dir = Path(tempfile.mkdtemp()) / "store-spool"
        proxied = url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        await upgrade(url)
        store = await make_store(proxied, spool_dir=spool_dir, flush_interval_s=0.02).start(migrate=False)
        store.writer.retry_max_s = 0.3
        now = time.time()
        recs = records("c", now)
        for r in recs[:2]:  # the conversation and the first turn are written...
            store.submit(r)
        assert await store.flush(20)
        proxy.cut()
        for r in recs[2:]:  # ...the rest queue: the database is down
            store.submit(r)
        await asyncio.sleep(0.5)
        assert store.writer.failing
        await store.close(timeout_s=1.0)  # a clean stop (SIGTERM): the queue goes to the spool
        files = Spool(spool_dir, database_key(store.url)).files()
        assert len(files) == 1 and store.writer.stats.spooled == len(recs) - 2
        kept = files[0].read_text(encoding="utf-8")
        # (as if some had been written after all: the spool also holds the first turn again)
        files[0].write_text(json.dumps(encode(recs[1])) + "\n" + kept, encoding="utf-8")
        backup = spool_dir.parent / "backup.jsonl"
        shutil.copy(files[0], backup)

        proxy.restore()
        again = make_store(proxied, spool_dir=spool_dir, flush_interval_s=0.02)
        await again.start(migrate=False)
        assert again.writer.stats.replayed == len(recs) - 2  # (the reply's progress is not replayed)
        assert await again.flush(20)
        assert Spool(spool_dir, database_key(store.url)).files() == []  # written: the file is gone
        got = await again.list_items("t", "c", order="asc")
        assert got is not None
        by_id = {i.id: i for i in got[0]}
        assert sorted(by_id) == ["a1", "f1", "f2", "m1", "u1"]
        assert (by_id["a1"].status, by_id["a1"].spoken_text) == ("incomplete", "Hi")
        assert by_id["u1"].text == "[removed]"
        conv = await again.get_conversation("t", "c")
        assert conv is not None and conv.summary == "They said hello."
        n_usage = await usage_rows(url)
        assert n_usage == 3  # the user turn's STT, the reply's LLM, the summary
        await again.close()

        # the same spool replayed once more (a process killed before it removed the file): nothing twice
        shutil.copy(backup, files[0])
        third = await make_store(proxied, spool_dir=spool_dir).start(migrate=False)
        assert await third.flush(20) and third.writer.stats.replayed == len(recs) - 2
        got = await third.list_items("t", "c", order="asc")
        assert got is not None and len(got[0]) == 5
        assert await usage_rows(url) == n_usage
        total = await third.conversation_usage("t", "c")
        assert total is not None and total[0].input_tokens == 200  # the reply's and the summary's, once each
        await third.close()
        assert Spool(spool_dir, database_key(store.url)).files() == []

        # a spool meant for another database is left alone
        other = Spool(spool_dir, database_key(url + "_other"))
        other.save(records("elsewhere", now))
        fourth = await make_store(proxied, spool_dir=spool_dir).start(migrate=False)
        assert fourth.writer.stats.replayed == 0 and await fourth.flush(20)
        assert await fourth.get_conversation("t", "elsewhere") is None
        await fourth.close()
        assert len(other.files()) == 1


async def test_the_spool_is_bounded_and_claimed_by_one_process(tmp_path) -> None:
    spool_dir = tmp_path / "store-spool"
    Spool(spool_dir).save(records("c", 1000.0))
    holder = Spool(spool_dir)
    assert len(holder.claim(100)) == len(records("c", 1000.0))
    assert Spool(spool_dir).claim(100) == []  # held by another process (the lock)
    holder.release()
    assert Spool(spool_dir).files() == []
    # a store whose database never answered: its queue (bounded by max_pending) goes to the spool
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'db.db'}"
    store = make_store(db_url, spool_dir=spool_dir, max_pending=100)  # (never started: its database never answered)
    for r in records("c", 1000.0):
        store.submit(r)
    await store.close()
    assert len(Spool(spool_dir, database_key(store.url)).files()) == 1
    small = make_store(db_url, spool_dir=spool_dir, max_pending=100)
    small.writer.max_pending = 4
    assert small.writer.load_spool() == 4 - 1  # 4 claimed, the reply's progress left out
    await small.start()
    assert await small.flush(20)
    await small.close()
    assert Spool(spool_dir, database_key(store.url)).files() == []
