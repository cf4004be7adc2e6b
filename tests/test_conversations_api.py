"""The Conversations API on a real server (the Moksori app under uvicorn, in its own process),
read with the official `openai` SDK, on real SQLite and real PostgreSQL. Conversations are
written through the store's real writer, as the engine side will write them.

Item shapes are checked strictly against the SDK's own pydantic models: every field we send
must be one the model declares, and each object must validate in pydantic's strict mode.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from pydantic import BaseModel, TypeAdapter

from databases import database
from moksori.accounting import PriceTable, TurnUsage
from moksori.store import (
    AgentReply,
    ConversationStarted,
    ReplyHeard,
    Store,
    ToolCallRecord,
    ToolResultRecord,
    UserTurn,
    tenant_id,
)
from servers import ServerProcess, free_port

HERE = Path(__file__).parent
K1, K2 = "key-one-secret", "key-two-secret"
ITEM = TypeAdapter(ConversationItem)


def strict(model, obj: dict) -> BaseModel:
    """Validate `obj` with the SDK model in strict mode and refuse fields the model lacks."""
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    parsed = adapter.validate_python(obj, strict=True)
    _no_extras(parsed, obj)
    return parsed


def _no_extras(parsed: BaseModel, obj: dict) -> None:
    extra = getattr(parsed, "model_extra", None) or {}
    assert not extra, f"fields the SDK model {type(parsed).__name__} does not declare: {sorted(extra)}"
    for name in type(parsed).model_fields:
        value = getattr(parsed, name)
        raw = obj.get(name) if isinstance(obj, dict) else None
        if isinstance(value, BaseModel) and isinstance(raw, dict):
            _no_extras(value, raw)
        elif isinstance(value, list) and isinstance(raw, list):
            for v, r in zip(value, raw):
                if isinstance(v, BaseModel) and isinstance(r, dict):
                    _no_extras(v, r)


async def populate(url: str) -> dict[str, str]:
    """Two keys; alice (key 1) has a spoken conversation with a tool call and an interrupted
    reply plus an older one; bob (key 2) has one. Written through the real batched writer."""
    prices = PriceTable.from_mapping({"models": {"gpt-test": {"input_per_1m": 1.0, "output_per_1m": 2.0}}})
    store = Store(url, hash_secret=b"test", prices=prices)
    await store.start()
    t1, t2 = tenant_id(K1), tenant_id(K2)
    now = time.time()
    old = now - 86400 * 3
    store.submit(ConversationStarted("conv_old", t1, "alice", "realtime", old))
    store.submit(UserTurn("conv_old", "item_o1", "Remember that my cat is called Nabi.", old + 1, language="en"))
    store.submit(AgentReply("conv_old", "item_o2", "I will remember Nabi.", old + 2))
    store.submit(ConversationStarted("conv_a", t1, "alice", "phone", now))
    store.submit(UserTurn("conv_a", "item_a1", "지하철은 어떻게 타요?", now + 1, language="ko",
                          usage=TurnUsage(stt_model="whisper-base", stt_seconds=1.5)))
    store.submit(ToolCallRecord("conv_a", "item_a2", "call_1", "route", '{"to": "Gangnam"}', now + 2))
    store.submit(ToolResultRecord("conv_a", "item_a3", "call_1", '{"line": 2}', now + 3))
    store.submit(AgentReply("conv_a", "item_a4", "Take line two to Gangnam, then walk five minutes.", now + 4,
                            heard_text="Take line two to Gangnam,", interrupted=True,
                            usage=TurnUsage(llm_model="gpt-test", input_tokens=1000, cached_tokens=200,
                                            output_tokens=500, tts_characters=26, tts_seconds=1.9)))
    store.submit(UserTurn("conv_a", "item_a5", "Thanks!", now + 5, language="en"))
    store.submit(AgentReply("conv_a", "item_a6", "You are welcome.", now + 6,
                            usage=TurnUsage(llm_model="gpt-test", input_tokens=1200, output_tokens=10)))
    store.submit(ReplyHeard("conv_a", "item_a6", "You are", now + 7))
    store.submit(ConversationStarted("conv_b", t2, "bob", "browser", now))
    store.submit(UserTurn("conv_b", "item_b1", "Bob's secret", now + 1))
    assert await store.flush(20)
    assert store.writer.stats.written == 13 and store.writer.stats.dropped_bad == 0
    await store.close()
    return {"t1": t1, "t2": t2}


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):
    with database(request.param, tmp_path) as url:
        asyncio.run(populate(url))
        port = free_port()
        env = {"MOKSORI_STORE_URL": url, "MOKSORI_API_KEYS": f"{K1},{K2}", "MOKSORI_DATA_DIR": str(tmp_path),
               "PYTHONUNBUFFERED": "1"}
        with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port,
                           ready_path="/health", env=env, ready_timeout_s=60) as srv:
            yield srv


def client(srv: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=srv.url + "/v1", max_retries=0)


def test_sdk_reads_conversations_and_items(server) -> None:
    c1 = client(server, K1)
    conv = c1.conversations.retrieve("conv_a")
    assert conv.id == "conv_a" and conv.object == "conversation"
    assert conv.metadata == {"channel": "phone", "user": "alice"}
    assert abs(conv.created_at - time.time()) < 600

    items = list(c1.conversations.items.list("conv_a", order="asc", limit=2))  # auto-pagination: 3 pages
    assert [i.id for i in items] == ["item_a1", "item_a2", "item_a3", "item_a4", "item_a5", "item_a6"]
    user, call, result, reply, _, late = items
    assert user.type == "message" and user.role == "user"
    assert user.content[0].type == "input_text" and user.content[0].text == "지하철은 어떻게 타요?"
    assert call.type == "function_call" and call.name == "route" and call.call_id == "call_1"
    assert call.arguments == '{"to": "Gangnam"}'
    assert result.type == "function_call_output" and result.output == '{"line": 2}' and result.call_id == "call_1"
    # an interrupted reply: what the user heard, marked incomplete
    assert reply.role == "assistant" and reply.status == "incomplete"
    assert reply.content[0].type == "output_text" and reply.content[0].text == "Take line two to Gangnam,"
    assert late.status == "incomplete" and late.content[0].text == "You are"  # truncated after it was stored

    newest_first = c1.conversations.items.list("conv_a", limit=100)
    assert [i.id for i in newest_first.data][0] == "item_a6" and not newest_first.has_more

    one = c1.conversations.items.retrieve("item_a4", conversation_id="conv_a")
    assert one.id == "item_a4"


def test_wire_shapes_match_the_sdk_models_strictly(server) -> None:
    h = {"Authorization": f"Bearer {K1}"}
    conv = httpx.get(server.url + "/v1/conversations/conv_a", headers=h).json()
    strict(Conversation, conv)
    page = httpx.get(server.url + "/v1/conversations/conv_a/items?order=asc&limit=100", headers=h).json()
    strict(ConversationItemList, page)
    kinds = set()
    for obj in page["data"]:
        parsed = strict(ITEM, obj)
        kinds.add((obj["type"], obj.get("role"), obj.get("content", [{}])[0].get("type")))
        assert type(parsed).__name__ in ("Message", "ResponseFunctionToolCallItem", "ResponseFunctionToolCallOutputItem")
    assert kinds == {("message", "user", "input_text"), ("message", "assistant", "output_text"),
                     ("function_call", None, None), ("function_call_output", None, None)}
    empty = httpx.get(server.url + "/v1/conversations/conv_old/items?after=item_o2&order=asc", headers=h).json()
    strict(ConversationItemList, empty)
    assert empty["data"] == [] and empty["has_more"] is False


def test_a_key_never_sees_another_keys_data(server) -> None:
    c2 = client(server, K2)
    for call in (lambda: c2.conversations.retrieve("conv_a"),
                 lambda: c2.conversations.items.list("conv_a"),
                 lambda: c2.conversations.items.retrieve("item_a1", conversation_id="conv_a"),
                 lambda: c2.conversations.delete("conv_a")):
        with pytest.raises(openai.NotFoundError):  # 404, not 403: the id is not even confirmed
            call()
    h2 = {"Authorization": f"Bearer {K2}"}
    assert httpx.get(server.url + "/v1/conversations?user=alice", headers=h2).status_code == 404
    assert httpx.delete(server.url + "/v1/users/alice", headers=h2).status_code == 404
    assert httpx.get(server.url + "/v1/usage?user=alice", headers=h2).status_code == 404
    listed = httpx.get(server.url + "/v1/conversations", headers=h2).json()
    assert [c["id"] for c in listed["data"]] == ["conv_b"]
    usage = httpx.get(server.url + "/v1/usage", headers=h2).json()
    assert usage["data"] == [] and usage["total"]["turns"] == 0  # bob used nothing, alice's usage is not here
    # the first key still has everything
    assert client(server, K1).conversations.retrieve("conv_a").id == "conv_a"
    with pytest.raises(openai.AuthenticationError):
        client(server, "not-a-key").conversations.retrieve("conv_a")


def test_list_by_user_usage_delete_and_erase(server) -> None:
    h = {"Authorization": f"Bearer {K1}"}
    listed = httpx.get(server.url + "/v1/conversations?user=alice", headers=h).json()
    assert [c["id"] for c in listed["data"]] == ["conv_a", "conv_old"]  # newest first
    for c in listed["data"]:
        strict(Conversation, c)
    page1 = httpx.get(server.url + "/v1/conversations?user=alice&limit=1", headers=h).json()
    page2 = httpx.get(server.url + f"/v1/conversations?user=alice&limit=1&after={page1['last_id']}", headers=h).json()
    assert page1["has_more"] and [c["id"] for c in page2["data"]] == ["conv_old"] and not page2["has_more"]

    today = time.strftime("%Y-%m-%d", time.gmtime())
    u = httpx.get(server.url + f"/v1/usage?user=alice&from={today}&to={today}", headers=h).json()
    assert u["total"]["input_tokens"] == 2200 and u["total"]["cached_tokens"] == 200
    assert u["total"]["output_tokens"] == 510 and u["total"]["stt_seconds"] == 1.5
    assert u["total"]["tts_characters"] == 26 and u["total"]["turns"] == 3
    # priced at write time: (800 * 1 + 200 * 1 + 500 * 2) / 1e6 + (1200 + 20) / 1e6
    assert u["total"]["cost_usd"] == pytest.approx(0.00322)
    assert [b["day"] for b in u["data"]] == [today]
    before = httpx.get(server.url + "/v1/usage?user=alice&to=2000-01-01", headers=h).json()
    assert before["data"] == [] and before["total"]["turns"] == 0
    bad = httpx.get(server.url + "/v1/usage?from=yesterday", headers=h)
    assert bad.status_code == 400 and "from" in bad.json()["error"]["message"]

    per_turn = httpx.get(server.url + "/v1/conversations/conv_a/usage", headers=h).json()
    assert [t["item_id"] for t in per_turn["turns"]] == ["item_a1", "item_a4", "item_a6"]
    assert per_turn["total"]["total_tokens"] == 2710

    deleted = client(server, K1).conversations.delete("conv_old")
    strict(ConversationDeletedResource, deleted.model_dump())
    assert deleted.deleted and deleted.id == "conv_old"
    with pytest.raises(openai.NotFoundError):
        client(server, K1).conversations.retrieve("conv_old")

    erased = httpx.delete(server.url + "/v1/users/alice", headers=h)
    assert erased.status_code == 200 and erased.json()["conversations"] == 1 and erased.json()["items"] == 6
    assert httpx.get(server.url + "/v1/conversations?user=alice", headers=h).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client(server, K1).conversations.items.list("conv_a")
    # usage survives erasure, no longer attributed to the user
    after = httpx.get(server.url + "/v1/usage", headers=h).json()
    assert after["total"]["input_tokens"] == 2200 and {b["user"] for b in after["data"]} == {None}


def test_bad_requests_are_clear_errors(server) -> None:
    h = {"Authorization": f"Bearer {K1}"}
    for path in ("/v1/conversations/conv_a/items?limit=0", "/v1/conversations/conv_a/items?limit=x",
                 "/v1/conversations/conv_a/items?order=sideways", "/v1/conversations?user=bad%20id%21"):
        r = httpx.get(server.url + path, headers=h)
        assert r.status_code == 400, path
        assert r.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/conversations/nope", headers=h).status_code == 404


def test_storage_off_says_so(tmp_path) -> None:
    port = free_port()
    env = {"MOKSORI_STORE_URL": "none", "MOKSORI_DATA_DIR": str(tmp_path)}
    with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port,
                       ready_path="/health", env=env) as srv:
        r = httpx.get(srv.url + "/v1/conversations/conv_a")
        assert r.status_code == 501 and "MOKSORI_STORE_URL=none" in r.json()["error"]["message"]
    assert not (tmp_path / "moksori.db").exists()


def test_dead_database_at_start_keeps_the_server_up(tmp_path) -> None:
    port, dead = free_port(), free_port()
    env = {"MOKSORI_STORE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{dead}/nothing",
           "MOKSORI_DATA_DIR": str(tmp_path)}
    with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port,
                       ready_path="/health", env=env) as srv:
        r = httpx.get(srv.url + "/v1/conversations/conv_a")
        assert r.status_code == 503 and "unavailable" in r.json()["error"]["message"]
        assert srv.wait_for_log("store: unavailable")
        assert "Traceback" not in srv.log_text()


def test_a_database_that_comes_back_is_used_without_a_restart(tmp_path) -> None:
    """PostgreSQL is down when the server starts (a proxy in front of it refuses connections):
    the API says the store is unavailable; once the database answers, the server migrates it and
    serves from it, with no restart (the retry runs every 2 s, doubling)."""
    from databases import postgres_database
    from tcp_proxy import TCPProxy

    with postgres_database() as url:
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        host, pg_port = host_port.rsplit(":", 1) if ":" in host_port else (host_port, "5432")
        proxy = TCPProxy(host, int(pg_port)).start()
        proxy.cut()
        try:
            port = free_port()
            env = {"MOKSORI_STORE_URL": url.replace(host_port, f"127.0.0.1:{proxy.port}"),
                   "MOKSORI_DATA_DIR": str(tmp_path)}
            with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port,
                               ready_path="/health", env=env) as srv:
                r = httpx.get(srv.url + "/v1/conversations/conv_a")
                assert r.status_code == 503 and "unavailable" in r.json()["error"]["message"]
                proxy.restore()
                deadline = time.monotonic() + 30
                while True:
                    r = httpx.get(srv.url + "/v1/conversations/conv_a")
                    if r.status_code != 503:
                        break
                    assert time.monotonic() < deadline, "the store never came back"
                    time.sleep(0.3)
                assert r.status_code == 404  # served from the (migrated, empty) store now
                assert srv.wait_for_log("store: available again")
                assert "Traceback" not in srv.log_text()
        finally:
            proxy.stop()


def test_an_unknown_after_cursor_is_a_400_not_the_first_page_again(server) -> None:
    """A cursor whose item was deleted (or that names nothing in this list) is refused: answering
    with the first page would send an auto-paging client round the list forever."""
    h = {"Authorization": f"Bearer {K1}"}
    c1 = client(server, K1)
    first = c1.conversations.items.list("conv_a", order="asc", limit=2)
    assert [i.id for i in first.data] == ["item_a1", "item_a2"] and first.has_more
    c1.conversations.items.delete("item_a2", conversation_id="conv_a")  # the page's cursor goes away
    with pytest.raises(openai.BadRequestError) as e:
        first.get_next_page()  # the SDK's own next-page request: after=item_a2
    assert e.value.code == "invalid_value" and e.value.param == "after" and "item_a2" in e.value.message
    # a cursor from another conversation, or another key's, names nothing in this list either
    for cursor in ("item_b1", "item_nope"):
        with pytest.raises(openai.BadRequestError) as e:
            c1.conversations.items.list("conv_a", after=cursor)
        assert e.value.param == "after" and cursor in e.value.message
    assert [i.id for i in c1.conversations.items.list("conv_a", order="asc", after="item_a3")] == [
        "item_a4", "item_a5", "item_a6"]  # a live cursor still pages
    # the list of conversations (no SDK method: OpenAI has no such route)
    for cursor in ("conv_nope", "conv_b"):
        r = httpx.get(server.url + f"/v1/conversations?after={cursor}", headers=h)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_value" and err["param"] == "after" and cursor in err["message"]
    page = httpx.get(server.url + "/v1/conversations?after=conv_a", headers=h).json()
    assert [c["id"] for c in page["data"]] == ["conv_old"]
