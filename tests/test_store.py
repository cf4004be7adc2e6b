"""The store on real SQLite and real PostgreSQL: migrations (idempotent, concurrent), the batched
writer (batching, outage and recovery through a proxy that cuts the database, a full buffer,
a bad record, kill -9), history within a budget, tenant isolation, erasure and retention."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import text

from databases import PG_DSN, database
from moksori.accounting import TurnUsage
from moksori.store import (
    AgentReply,
    ConversationStarted,
    ItemDeleted,
    ReplyProgress,
    Store,
    SummaryUpdated,
    ToolCallRecord,
    ToolResultRecord,
    UserTurn,
    phone_user_id,
    tenant_id,
)
from moksori.store.db import make_engine
from moksori.store.records import storable
from moksori.store.spool import Spool, database_key, encode
from moksori.store.migrate import current_revision, head_revision, upgrade
from tcp_proxy import TCPProxy


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    with database(request.param, tmp_path) as u:
        yield u


def make_store(url: str, **kw) -> Store:
    return Store(url, hash_secret=b"test-secret", **kw)


def turns(conv: str, n: int, t0: float, *, words: int = 8, prefix: str = "") -> list:
    out = []
    for i in range(n):
        out.append(UserTurn(conv, f"{prefix}u{i}", f"user says number {i} " + "blah " * words, t0 + 2 * i))
        out.append(AgentReply(conv, f"{prefix}a{i}", f"agent answers {i} " + "yada " * words, t0 + 2 * i + 1,
                              usage=TurnUsage(llm_model="m", input_tokens=100, output_tokens=10)))
    return out


async def test_migrations_are_idempotent_and_safe_to_run_at_once(url) -> None:
    assert await current_revision(url) is None
    revs = await asyncio.gather(*(upgrade(url) for _ in range(3)))  # three workers starting together
    assert revs == [head_revision()] * 3
    assert await current_revision(url) == head_revision()
    assert await upgrade(url) == head_revision()  # again: a no-op
    engine = make_engine(url)
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar()
    await engine.dispose()
    assert n == 1


def test_db_upgrade_command(tmp_path) -> None:
    db = tmp_path / "cli.db"
    env = {**os.environ, "MOKSORI_STORE_URL": f"sqlite:///{db}", "MOKSORI_DATA_DIR": str(tmp_path)}
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "moksori", "db", "upgrade"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert head_revision() in r.stdout + r.stderr
    assert asyncio.run(current_revision(f"sqlite:///{db}")) == head_revision()
    off = subprocess.run([sys.executable, "-m", "moksori", "db", "upgrade"], capture_output=True, text=True,
                         env={**env, "MOKSORI_STORE_URL": "none"}, timeout=60)
    assert off.returncode == 2 and "off" in off.stderr and "Traceback" not in off.stderr


async def test_writer_batches_many_small_writes(url) -> None:
    store = await make_store(url, flush_interval_s=0.05).start()
    t0 = time.time()
    for c in range(20):
        store.submit(ConversationStarted(f"conv_{c}", "default", f"user{c % 5}", "realtime", t0))
        for r in turns(f"conv_{c}", 10, t0):
            store.submit(r)
    assert await store.flush(30)
    st = store.writer.stats
    assert st.written == 20 * 21 and st.dropped_bad == 0 and st.dropped_full == 0
    assert st.batches <= 5, st  # 420 records in a handful of transactions, not 420
    listed, more = await store.list_conversations("default", "user0", limit=100)
    assert len(listed) == 4 and not more
    await store.close()


async def test_history_within_budget_newest_first_and_clean_start(url) -> None:
    store = await make_store(url).start()
    t0 = time.time() - 1000
    store.submit(ConversationStarted("c1", "default", "alice", "realtime", t0))
    for r in turns("c1", 30, t0, prefix="old"):
        store.submit(r)
    store.submit(ConversationStarted("c2", "default", "alice", "phone", t0 + 500))
    store.submit(UserTurn("c2", "q", "what is the weather in Seoul", t0 + 501))
    store.submit(ToolCallRecord("c2", "fc", "call_1", "weather", '{"city": "Seoul"}', t0 + 502))
    store.submit(ToolResultRecord("c2", "fo", "call_1", "sunny, 21 C", t0 + 503))
    store.submit(AgentReply("c2", "r", "It is sunny and twenty one degrees in Seoul today.", t0 + 504,
                            heard_text="It is sunny", interrupted=True))
    store.submit(AgentReply("c2", "r2", "", t0 + 505, heard_text="", interrupted=True))  # nothing heard
    store.submit(SummaryUpdated("c2", "Alice asked about numbers for a long time.", "olda10", t0 + 506))
    assert await store.flush(20)

    everything = await store.load_history("default", "alice", max_tokens=100_000)
    assert not everything.truncated and everything.summary is None
    assert len(everything.items) == 60 + 4  # the empty interrupted reply is left out
    assert everything.items[0].id == "oldu0" and everything.items[-1].id == "r"
    assert everything.items[-1].spoken_text == "It is sunny"  # what was heard, not what was generated
    assert everything.last_conversation_id == "c2"

    small = await store.load_history("default", "alice", max_tokens=120)
    assert small.truncated and small.tokens <= 120
    assert small.summary == "Alice asked about numbers for a long time."
    assert small.items[0].type == "message" and small.items[0].role == "user"  # never inside a tool exchange
    assert [i.id for i in small.items][-4:] == ["q", "fc", "fo", "r"]
    tiny = await store.load_history("default", "alice", max_tokens=20)
    assert all(i.type == "message" for i in tiny.items[:1])
    assert (await store.load_history("default", "nobody", max_tokens=1000)).items == []
    assert (await store.load_history("other-tenant", "alice", max_tokens=1000)).items == []
    await store.close()


async def test_tenants_are_isolated(url) -> None:
    store = await make_store(url).start()
    t1, t2 = tenant_id("k1"), tenant_id("k2")
    assert t1 != t2 and "k1" not in t1
    now = time.time()
    store.submit(ConversationStarted("ca", t1, "sam", "text", now))
    store.submit(UserTurn("ca", "x", "tenant one's words", now))
    store.submit(ConversationStarted("cb", t2, "sam", "text", now))  # same user id, other key
    store.submit(UserTurn("cb", "y", "tenant two's words", now))
    assert await store.flush(20)
    assert await store.get_conversation(t2, "ca") is None
    assert await store.list_items(t2, "ca") is None
    assert await store.get_item(t2, "ca", "x") is None
    assert not await store.delete_conversation(t2, "ca")
    h1 = await store.load_history(t1, "sam", max_tokens=1000)
    assert [i.text for i in h1.items] == ["tenant one's words"]
    assert await store.erase_user(t2, "sam") == {"conversations": 1, "items": 1}
    assert [i.text for i in (await store.load_history(t1, "sam", max_tokens=1000)).items] == ["tenant one's words"]
    await store.close()


async def test_retention_purges_old_conversations_keeps_usage(url) -> None:
    store = await make_store(url, retention_days=30).start()
    now = time.time()
    old = now - 40 * 86400
    store.submit(ConversationStarted("old", "default", "ann", "text", old))
    for r in turns("old", 2, old):
        store.submit(r)
    store.submit(ConversationStarted("new", "default", "bo", "text", now))
    for r in turns("new", 2, now):
        store.submit(r)
    assert await store.flush(20)
    assert await store.purge() == 1
    assert await store.get_conversation("default", "old") is None
    assert await store.get_conversation("default", "new") is not None
    assert await store.list_conversations("default", "ann") is None  # the user left with no conversation went too
    buckets = await store.usage("default")
    assert sum(b.usage.input_tokens for b in buckets) == 400  # usage stays for the key's totals
    assert await store.purge(older_than_days=0) == 0  # 0 = keep forever
    await store.close()


def test_phone_numbers_are_stored_hashed() -> None:
    a = phone_user_id("+82 10-1234-5678", b"s")
    assert a == phone_user_id("+821012345678", b"s") and a.startswith("tel:")
    assert "1234" not in a and a != phone_user_id("+821012345678", b"other secret")


async def test_a_bad_record_is_dropped_alone_with_a_log_line(tmp_path, caplog) -> None:
    store = await make_store(f"sqlite:///{tmp_path / 'x.db'}", flush_interval_s=0.2).start()
    now = time.time()
    store.submit(ConversationStarted("c", "default", None, "text", now))
    store.submit(UserTurn("c", "ok1", "fine", now))
    store.submit(UserTurn("no-such-conversation", "bad", "orphan", now))  # foreign key violation
    store.submit(UserTurn("c", "ok2", "also fine", now))
    with caplog.at_level(logging.ERROR, logger="moksori.store"):
        assert await store.flush(20)
    assert store.writer.stats.dropped_bad == 1 and store.writer.stats.written == 3
    assert "UserTurn" in caplog.text and "no-such-conversation" in caplog.text
    items, _ = await store.list_items("default", "c", order="asc")
    assert [i.id for i in items] == ["ok1", "ok2"]
    await store.close()


async def test_text_no_database_can_hold_is_stored_cleaned_and_blocks_nothing(url, tmp_path) -> None:
    """A NUL (PostgreSQL's text cannot hold it) or a lone surrogate (a client's "\\ud800" JSON
    escape: no UTF-8 encoder takes it) in a typed turn used to stop the writer for good, retrying
    that batch as if the database were down, and a spool at close raised: everything after it was
    lost. Such text is stored cleaned, and the records after it are written."""
    spool = tmp_path / "spool"
    store = await make_store(url, flush_interval_s=0.05, spool_dir=spool).start()
    now = time.time()
    store.submit(ConversationStarted("c", "default", "u\x00ser", "realtime", now, metadata={"k\ud800": "v\x00"}))
    store.submit(UserTurn("c", "u1", "hello\x00world", now))
    store.submit(UserTurn("c", "u2", "hello \ud800 world", now + 1))
    store.submit(AgentReply("c", "a1", "fine", now + 2, heard_text="fi\udc00"))
    store.submit(ConversationStarted("d", "default", None, "realtime", now + 3))
    store.submit(UserTurn("d", "u3", "the next conversation", now + 3))
    assert await store.flush(20)
    assert store.writer.stats.written == 6 and store.writer.stats.dropped_bad == 0
    items, _ = await store.list_items("default", "c", order="asc")
    assert [i.text for i in items][:2] == ["helloworld", "hello \ufffd world"]
    items, _ = await store.list_items("default", "d", order="asc")
    assert [i.text for i in items] == ["the next conversation"]
    await store.close()
    assert not list(spool.glob("*")) or not any(p.read_bytes() for p in spool.glob("*"))


async def test_a_spool_with_unclean_text_is_replayed_cleaned(url, tmp_path) -> None:
    """A spool written before records were cleaned (JSON escapes keep such text in the file)."""
    store = make_store(url, flush_interval_s=0.05, spool_dir=tmp_path / "spool")
    now = time.time()
    dirty = [ConversationStarted("c", "default", None, "realtime", now), UserTurn("c", "u1", "a\x00b\ud800", now)]
    spool = Spool(tmp_path / "spool", database_key(store.url))
    spool.dir.mkdir(parents=True)
    (spool.dir / f"pending-{spool.database}-{time.time_ns():020d}-1.jsonl").write_text(
        "".join(json.dumps(encode(r)) + "\n" for r in dirty), encoding="ascii")
    await store.start()
    assert store.writer.stats.replayed == 2 and await store.flush(20)
    items, _ = await store.list_items("default", "c", order="asc")
    assert [i.text for i in items] == ["ab\ufffd"]
    await store.close()


async def test_a_deleted_item_leaves_the_stored_history(url) -> None:
    """A Realtime client's conversation.item.delete: the item stayed in the store, so the next
    session's history (and the conversations API) brought it back."""
    store = await make_store(url, flush_interval_s=0.05).start()
    now = time.time()
    store.submit(ConversationStarted("c", "default", "u", "realtime", now))
    store.submit(UserTurn("c", "u1", "keep this", now))
    store.submit(UserTurn("c", "u2", "my card number is one two three", now + 1))
    assert await store.flush(20)  # written in an earlier batch than its deletion
    store.submit(ItemDeleted("c", "u2", now + 2))
    store.submit(UserTurn("c", "u3", "and this, deleted in its own batch", now + 3))
    store.submit(ItemDeleted("c", "u3", now + 4))
    assert await store.flush(20)
    items, _ = await store.list_items("default", "c", order="asc")
    assert [i.id for i in items] == ["u1"]
    await store.close()


def test_storable_leaves_clean_records_alone() -> None:
    rec = UserTurn("c", "u", "안녕하세요, clean text", 1.0, latency={"stt_ms": 3.0})
    assert storable(rec) is rec
    dirty = storable(ToolCallRecord("c", "i", "call", "f\x00n", '{"a": "\ud83d"}', 1.0))
    assert dirty.name == "fn" and dirty.arguments == '{"a": "\ufffd"}'


async def test_database_outage_loses_nothing_and_a_full_buffer_says_so(caplog) -> None:
    """PostgreSQL through a proxy: cut it while sessions keep talking, restore it, and every
    record is written once; past the buffer's limit, the drop is logged with a count."""
    from databases import postgres_database

    host, port = PG_DSN.split("@", 1)[1].split(":")
    with postgres_database() as url, TCPProxy(host, int(port)) as proxy:
        proxied = url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        await upgrade(url)
        store = await make_store(proxied, max_pending=300, flush_interval_s=0.02).start(migrate=False)
        store.writer.retry_max_s = 0.3
        now = time.time()
        store.submit(ConversationStarted("c", "default", "u", "realtime", now))
        assert await store.flush(20)
        proxy.cut()
        with caplog.at_level(logging.WARNING, logger="moksori.store"):
            for r in turns("c", 100, now):  # 200 records during the outage
                assert store.submit(r)
            await asyncio.sleep(1.0)
            assert store.writer.stats.failures >= 2 and store.writer.pending == 200
            assert "write failed" in caplog.text
            proxy.restore()
            assert await store.flush(30)
        assert store.writer.stats.written == 201 and "database back" in caplog.text
        items, _ = await store.list_items("default", "c", limit=100)
        assert len(items) == 100
        assert len((await store.load_history("default", "u", max_tokens=100_000)).items) == 200

        # a long outage: the buffer holds 300 records, the rest are refused and counted
        proxy.cut()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="moksori.store"):
            accepted = sum(store.submit(r) for r in turns("c", 200, now + 1000, prefix="late"))
        assert accepted == 300 and store.writer.stats.dropped_full == 100
        assert "dropped" in caplog.text and "buffer is full" in caplog.text
        proxy.restore()
        assert await store.flush(30)
        assert store.writer.stats.written == 501
        await store.close()


async def test_slow_database_does_not_block_submit(tmp_path) -> None:
    from databases import postgres_database

    host, port = PG_DSN.split("@", 1)[1].split(":")
    with postgres_database() as url, TCPProxy(host, int(port)) as proxy:
        await upgrade(url)
        proxy.delay_s = 0.05  # every packet 50 ms late
        store = await make_store(url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")).start(migrate=False)
        now = time.time()
        t = time.perf_counter()
        store.submit(ConversationStarted("c", "default", "u", "realtime", now))
        for r in turns("c", 200, now):
            store.submit(r)
        submit_s = time.perf_counter() - t
        assert submit_s < 0.5, submit_s  # 401 submits: microseconds each, whatever the database does
        assert await store.flush(60)
        assert store.writer.stats.written == 401
        await store.close()


CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from moksori.store import Store, ConversationStarted, UserTurn, AgentReply
    async def main():
        store = await Store(sys.argv[1], hash_secret=b"k").start()
        now = time.time()
        store.submit(ConversationStarted("c", "default", "u", "realtime", now))
        i = 0
        while True:
            store.submit(UserTurn("c", f"u{i}", f"turn {i}", now + i))
            store.submit(AgentReply("c", f"a{i}", f"reply {i}", now + i + 0.5))
            await store.flush(10)
            print("flushed", i, flush=True)
            i += 1
            await asyncio.sleep(0.02)
    asyncio.run(main())
""")


def test_kill_9_loses_at_most_the_turn_in_flight(url) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True)
    try:
        last = -1
        for line in proc.stdout:
            last = int(line.split()[1])
            if last >= 20:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)

    async def check() -> int:
        store = await make_store(url).start()
        h = await store.load_history("default", "u", max_tokens=1_000_000)
        await store.close()
        ids = [i.id for i in h.items]
        n = sum(1 for i in ids if i.startswith("u"))
        assert ids[: 2 * (last + 1)] == [x for k in range(last + 1) for x in (f"u{k}", f"a{k}")]
        return n

    n = asyncio.run(check())
    assert last + 1 <= n <= last + 2  # everything acknowledged is there; at most one turn more


def test_urls_and_secrets(tmp_path) -> None:
    from moksori.errors import ConfigError
    from moksori.store.db import normalise_url, redacted
    from moksori.store.identity import hash_secret

    assert normalise_url(f"sqlite:///{tmp_path}/a/b.db").startswith("sqlite+aiosqlite:///")
    assert (tmp_path / "a").is_dir()  # the folder of a SQLite file is made
    assert normalise_url("postgresql://u:pw@h/db").startswith("postgresql+asyncpg://u:pw@h/db")
    assert "pw" not in redacted("postgresql://u:pw@h/db")
    for bad in ("mysql://h/db", "not a url"):
        with pytest.raises(ConfigError) as e:
            normalise_url(bad)
        assert "\n" not in str(e.value)
    a = hash_secret(None, tmp_path)
    assert len(a) == 32 and hash_secret(None, tmp_path) == a  # made once, then read back
    assert (tmp_path / "store-secret").stat().st_mode & 0o077 == 0
    assert hash_secret("configured", tmp_path) == b"configured"


async def test_records_submitted_before_start_are_written(tmp_path) -> None:
    store = make_store(f"sqlite:///{tmp_path / 'early.db'}")
    now = time.time()
    store.submit(ConversationStarted("c", "default", "u", "cli", now))
    store.submit(UserTurn("c", "x", "early bird", now))
    await store.start()
    assert await store.flush(20) and store.writer.stats.written == 2
    await store.close()
    assert not store.submit(UserTurn("c", "y", "after close", now))  # refused, and said so
    assert store.writer.stats.dropped_full == 1


async def test_a_store_closed_before_its_database_ever_answered_says_what_it_lost(tmp_path, caplog) -> None:
    """A server stopped while its database was still down at start-up: the queued records are
    lost, with a log line that counts them (never silently); closing does not hang."""
    store = make_store(f"sqlite:///{tmp_path / 'never.db'}")
    now = time.time()
    for i in range(3):
        assert store.submit(UserTurn("c", f"x{i}", "queued", now))
    barrier = store.writer.barrier()
    with caplog.at_level(logging.ERROR, logger="moksori.store"):
        await asyncio.wait_for(store.close(), 10)
    assert barrier.result(1) is False  # released (not written), nobody waits forever
    assert any("3 records were not written" in r.getMessage() for r in caplog.records), caplog.text
    assert not store.submit(UserTurn("c", "late", "after close", now))


async def test_a_replys_progress_is_one_item_that_its_end_replaces(url) -> None:
    """While a reply plays its heard part is written as it grows (one `in_progress` item, in its
    place after the user's turn); the reply's own record replaces it; a late progress changes
    nothing; the history reads the in-flight reply as what was heard."""
    store = await make_store(url).start()
    now = time.time()
    store.submit(ConversationStarted("c", "t", "u", "realtime", now))
    store.submit(UserTurn("c", "u1", "Tell me a story.", now + 1))
    store.submit(ReplyProgress("c", "a1", "Once upon", now + 2, response_id="r1"))
    assert await store.flush(20)
    store.submit(ReplyProgress("c", "a1", "Once upon a time there", now + 3, response_id="r1"))
    store.submit(UserTurn("c", "u2", "Wait.", now + 3.5))
    assert await store.flush(20)
    got = (await store.list_items("t", "c", order="asc"))
    assert got is not None
    assert [(i.id, i.status, i.spoken_text) for i in got[0]] == [
        ("u1", "completed", "Tell me a story."), ("a1", "in_progress", "Once upon a time there"),
        ("u2", "completed", "Wait.")]
    h = await store.load_history("t", "u", max_tokens=1000)
    assert [i.spoken_text for i in h.items] == ["Tell me a story.", "Once upon a time there", "Wait."]

    store.submit(AgentReply("c", "a1", "Once upon a time there was a fox.", now + 4,
                            heard_text="Once upon a time there was", interrupted=True, status="cancelled",
                            response_id="r1", replaces_progress=True))
    store.submit(ReplyProgress("c", "a1", "Once", now + 5))  # late: the reply has ended
    assert await store.flush(20) and store.writer.stats.dropped_bad == 0
    got = (await store.list_items("t", "c", order="asc"))
    assert got is not None
    a1 = [i for i in got[0] if i.id == "a1"]
    assert len(a1) == 1 and len(got[0]) == 3
    assert (a1[0].status, a1[0].text, a1[0].spoken_text, a1[0].interrupted) == (
        "incomplete", "Once upon a time there was a fox.", "Once upon a time there was", True)
    await store.close()


def test_a_number_without_decimal_digits_is_an_anonymous_caller() -> None:
    """Superscript digits are digits to `str.isdigit` but not to `\\d`: a number made only of them
    hashed to `tel:` + HMAC of nothing, one user id for every such caller. It is anonymous."""
    from types import SimpleNamespace

    from pydantic import SecretStr

    from moksori.server.recording_hooks import phone_who

    class HashingStore:
        def phone_user_id(self, number: str) -> str:
            return phone_user_id(number, b"s")

    state = SimpleNamespace(store=HashingStore(), keys=[],
                            settings=SimpleNamespace(telephony=SimpleNamespace(owner_key=SecretStr(""))))
    assert phone_who(state, "+\u00b9\u00b2\u00b3", "twilio").user is None
    assert phone_who(state, "anonymous", "twilio").user is None
    assert phone_who(state, "+1 555 0100", "twilio").user == phone_user_id("+15550100", b"s")
    assert phone_who(state, "+\uff11\uff15\uff15\uff15\uff10\uff11\uff10\uff10", "twilio").user == \
        phone_user_id("+15550100", b"s")
