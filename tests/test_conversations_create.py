"""A client seeds and edits a user's history through the Conversations API's writes, and the
user's next session resumes with it.

The real app (`tests/text_server.py`: `create_app` under uvicorn with its lifespan, fast fake
speech models) on real SQLite and real PostgreSQL, with two API keys. Its LLM is the real
OpenAI-compatible client talking to `tests/scripted_llm_server.py` on loopback, the stand-in for
a smart model, which records every prompt. The official `openai` SDK creates a conversation with
`metadata.user`, adds items, deletes one; then the SDK's Realtime client opens a text session as
that user (`?user=`), and the prompt the agent sent holds the seeded items, in order, before the
new turn. Another key cannot touch the conversation, and its user of the same id has none of it.
Bad requests are OpenAI-style 400s (413, 404, 503) that write nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from databases import database, postgres_database
from openai.types.conversations import Conversation, ConversationItemList
from realtime_speech import Client
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from test_conversations_api import ITEM, strict

from moksori.store import AgentReply, ConversationStarted, Store, ToolCallRecord, ToolResultRecord, UserTurn

HERE = Path(__file__).parent
K1, K2 = "sk-seed-key-one", "sk-seed-key-two"
HUGE = "word " * 120_000  # 600 KB: inside the 1 MiB body cap, far beyond any history budget


class World:
    def __init__(self, srv: ServerProcess, llm: ScriptedLLM | None = None) -> None:
        self.srv, self.llm = srv, llm

    def api(self, key: str = K1) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=self.srv.url + "/v1", max_retries=0)

    def call(self, method: str, path: str, key: str = K1, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.srv.url + path, headers={"Authorization": f"Bearer {key}", **kw.pop(
            "headers", {})}, timeout=30, **kw)


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory, scripted_llm):
    with database(request.param, tmp_path_factory.mktemp("db")) as url:
        port = free_port()
        env = {"MOKSORI_STORE_URL": url, "MOKSORI_API_KEYS": f"{K1},{K2}",
               "MOKSORI_DATA_DIR": str(tmp_path_factory.mktemp("data")), "MOKSORI_LLM_PROVIDER": "openai",
               "MOKSORI_LLM_BASE_URL": scripted_llm.url, "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_CONFIG": "",
               "MOKSORI_LANGUAGE": "en", "PYTHONUNBUFFERED": "1"}
        with ServerProcess([sys.executable, str(HERE / "text_server.py"), str(port)], port=port,
                           ready_path="/health", env=env, ready_timeout_s=60) as srv:
            yield World(srv, scripted_llm)
            assert "Traceback" not in srv.log_text()


def new_user(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def prompt(world: World, key: str, user: str, text: str) -> list[tuple[str, str]]:
    """A text session of `user` (the SDK's Realtime client, `?user=`): one typed turn; the
    messages of the first prompt its agent sent, without the system prompt."""

    async def main() -> dict[str, Any]:
        c = await Client.open(world.srv.port, key, user=user)
        try:
            await c.wait("session.created", timeout=10)
            await c.conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await c.wait("session.updated", timeout=10)
            before = len(world.llm.requests)
            await c.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": text}]})
            await c.conn.response.create()
            done = await c.wait("response.done", timeout=30)
            assert done["response"]["status"] == "completed", done
            return world.llm.requests[before]
        finally:
            await c.close()

    sent = asyncio.run(main())["messages"]
    assert sent[0]["role"] == "system"  # the session's instructions
    return [(m["role"], m.get("content") or "") for m in sent[1:]]


def wait_for(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)
    return value


# --------------------------------------------------------------------------- seeding a user's history


def test_a_seeded_conversation_is_the_history_the_users_next_session_resumes(world: World) -> None:
    user = new_user("mina")
    api = world.api()
    conv = api.conversations.create(
        items=[{"role": "user", "content": "My cat is called Nabi."},  # EasyInputMessage, text content
               {"type": "message", "role": "assistant", "id": "msg_from_elsewhere", "status": "completed",
                "content": [{"type": "output_text", "text": "Nabi is a lovely name.", "annotations": []}]}],
        metadata={"user": user, "topic": "pets"})
    assert conv.id.startswith("conv_") and abs(conv.created_at - time.time()) < 600
    assert conv.metadata == {"topic": "pets", "channel": "api", "user": user}
    assert api.conversations.retrieve(conv.id).metadata == conv.metadata

    added = api.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "I live in Busan."}]},
        {"type": "message", "role": "assistant", "id": "x", "status": "incomplete",  # heard in part
         "content": [{"type": "output_text", "text": "Busan is by", "annotations": []}]}])
    assert added.object == "list" and not added.has_more
    assert [(i.role, i.content[0].text, i.status) for i in added.data] == [
        ("user", "I live in Busan.", "completed"), ("assistant", "Busan is by", "incomplete")]
    assert added.first_id == added.data[0].id and added.last_id == added.data[1].id
    assert all(i.id.startswith("msg_") for i in added.data)  # the server names its items

    oops = api.conversations.items.create(conv.id, items=[{"role": "user", "content": "My PIN is 4321."}])
    after_delete = api.conversations.items.delete(oops.data[0].id, conversation_id=conv.id)
    assert after_delete.id == conv.id and after_delete.metadata["user"] == user
    with pytest.raises(openai.NotFoundError):
        api.conversations.items.retrieve(oops.data[0].id, conversation_id=conv.id)
    updated = api.conversations.update(conv.id, metadata={"topic": "cats", "user": user})
    assert updated.metadata == {"topic": "cats", "channel": "api", "user": user}

    stored = list(api.conversations.items.list(conv.id, order="asc"))
    assert [(i.role, i.content[0].type, i.content[0].text) for i in stored] == [
        ("user", "input_text", "My cat is called Nabi."), ("assistant", "output_text", "Nabi is a lovely name."),
        ("user", "input_text", "I live in Busan."), ("assistant", "output_text", "Busan is by")]

    # the user's next session: the agent's prompt holds the seeded items, in order, then the turn
    sent = prompt(world, K1, user, "What is my cat called?")
    assert sent == [("user", "My cat is called Nabi."), ("assistant", "Nabi is a lovely name."),
                    ("user", "I live in Busan."), ("assistant", "Busan is by"),
                    ("user", "What is my cat called?")], sent
    # that session is recorded as the user's next conversation, after the seeded one
    listed = wait_for(lambda: (r := world.call("GET", f"/v1/conversations?user={user}").json())["data"][1:] and r,
                      "the session's conversation")
    assert [c["metadata"]["channel"] for c in listed["data"]] == ["realtime", "api"]
    session_items = list(api.conversations.items.list(listed["data"][0]["id"], order="asc"))
    assert [i.content[0].text for i in session_items] == ["What is my cat called?", SHORT_REPLY]

    # the same user id under the other key is another user: nothing of it
    assert prompt(world, K2, user, "What is my cat called?") == [("user", "What is my cat called?")]


def test_a_message_longer_than_the_history_budget_leaves_the_rest_of_the_history(world: World) -> None:
    """A seeded 600 KB document (the 1 MiB body cap lets it in, and it is stored whole) cannot
    fit any session's history budget: it alone is left out of the next session's prompt. It
    used to stop the history's walk, so the user's next session had no history at all."""
    user = new_user("doc")
    api = world.api()
    conv = api.conversations.create(items=[{"role": "user", "content": "My cat is called Nabi."},
                                           {"role": "assistant", "content": "Nabi is a lovely name."}],
                                    metadata={"user": user})
    big = api.conversations.items.create(conv.id, items=[{"role": "user", "content": HUGE}])
    stored = api.conversations.items.retrieve(big.data[0].id, conversation_id=conv.id)
    assert stored.content[0].text == HUGE  # the conversation keeps the whole text
    api.conversations.items.create(conv.id, items=[{"role": "assistant", "content": "That is a long text."}])

    sent = prompt(world, K1, user, "What is my cat called?")
    assert sent == [("user", "My cat is called Nabi."), ("assistant", "Nabi is a lovely name."),
                    ("assistant", "That is a long text."), ("user", "What is my cat called?")], \
        [(r, t[:40]) for r, t in sent]


def test_a_seeded_system_message_reaches_the_session_as_a_system_message(world: World) -> None:
    user = new_user("pilot")
    world.api().conversations.create(items=[{"role": "system", "content": "The user is a pilot."},
                                            {"role": "user", "content": "My cat is called Nabi."}],
                                     metadata={"user": user})
    sent = prompt(world, K1, user, "Who am I?")
    assert sent == [("system", "The user is a pilot."), ("user", "My cat is called Nabi."), ("user", "Who am I?")] \
        or sent[:2] == [("system", "The user is a pilot."), ("user", "My cat is called Nabi. Who am I?")], sent


def test_the_writes_match_the_sdk_models_strictly(world: World) -> None:
    user = new_user("shape")
    r = world.call("POST", "/v1/conversations", json={
        "items": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                  {"role": "system", "content": "Speak slowly."}],
        "metadata": {"user": user}})
    assert r.status_code == 200, r.text
    conv = r.json()
    strict(Conversation, conv)
    page = world.call("GET", f"/v1/conversations/{conv['id']}/items?order=asc").json()
    assert [(i["role"], i["content"][0]["text"]) for i in page["data"]] == [("user", "Hi"), ("system", "Speak slowly.")]
    for obj in page["data"]:
        strict(ITEM, obj)
    r = world.call("POST", f"/v1/conversations/{conv['id']}/items", json={"items": [
        {"type": "message", "role": "assistant", "id": "a", "status": "completed",
         "content": [{"type": "output_text", "text": "Slowly, then.", "annotations": [], "logprobs": []}]}]})
    assert r.status_code == 200, r.text
    strict(ConversationItemList, r.json())
    r = world.call("POST", f"/v1/conversations/{conv['id']}", json={"metadata": None})  # clears the client's pairs
    assert r.status_code == 200 and r.json()["metadata"] == {"channel": "api", "user": user}
    strict(Conversation, r.json())
    r = world.call("DELETE", f"/v1/conversations/{conv['id']}/items/{page['data'][1]['id']}")
    assert r.status_code == 200, r.text
    strict(Conversation, r.json())
    anonymous = world.call("POST", "/v1/conversations", content=b"")  # no body at all: an empty conversation
    assert anonymous.status_code == 200 and anonymous.json()["metadata"] == {"channel": "api"}
    # the user a session names (`X-Moksori-User` / `?user=`) works as metadata.user does
    by_header = world.call("POST", "/v1/conversations", headers={"X-Moksori-User": user}, json={})
    assert by_header.json()["metadata"] == {"channel": "api", "user": user}


# --------------------------------------------------------------------------- tenants


def test_one_key_cannot_touch_another_keys_conversation(world: World) -> None:
    user = new_user("iso")
    mine = world.api(K1).conversations.create(items=[{"role": "user", "content": "Key one's words."}],
                                              metadata={"user": user})
    other = world.api(K2)
    for attempt in (lambda: other.conversations.items.create(mine.id, items=[{"role": "user", "content": "Hi"}]),
                    lambda: other.conversations.update(mine.id, metadata={"x": "y"}),
                    lambda: other.conversations.items.delete(
                        world.api(K1).conversations.items.list(mine.id).data[0].id, conversation_id=mine.id),
                    lambda: other.conversations.retrieve(mine.id)):
        with pytest.raises(openai.NotFoundError):  # 404, not 403: the id is not even confirmed
            attempt()
    # the other key's user of the same id is its own user
    theirs = other.conversations.create(items=[{"role": "user", "content": "Key two's words."}],
                                        metadata={"user": user})
    ids = {k: [c["id"] for c in world.call("GET", f"/v1/conversations?user={user}", k).json()["data"]]
           for k in (K1, K2)}
    assert ids == {K1: [mine.id], K2: [theirs.id]}
    assert [i.content[0].text for i in world.api(K1).conversations.items.list(mine.id)] == ["Key one's words."]
    assert world.api(K1).conversations.retrieve(mine.id).metadata == {"channel": "api", "user": user}


# --------------------------------------------------------------------------- bad requests


def _items(*items: Any) -> dict[str, Any]:
    return {"items": list(items)}


def _user_msg(content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content, **extra}


BAD_CREATES: list[tuple[Any, str, str | None]] = [  # body, code, param
    ({"model": "gpt-4o"}, "unknown_parameter", "model"),
    (_items(_user_msg("hi", color="red")), "unknown_parameter", "items[0].color"),
    (_items(_user_msg([{"type": "input_text", "text": "hi", "bold": True}])), "unknown_parameter",
     "items[0].content[0].bold"),
    ({"items": "hello"}, "invalid_type", "items"),
    ({"metadata": ["a"]}, "invalid_type", "metadata"),
    ({"metadata": {"n": 1}}, "invalid_type", "metadata.n"),
    (_items(_user_msg(42)), "invalid_type", "items[0].content"),
    (_items(_user_msg([{"type": "input_text", "text": 42}])), "invalid_type", "items[0].content[0].text"),
    (_items(*[_user_msg("hi")] * 21), "array_above_max_length", "items"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "object_above_max_properties", "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "invalid_value", "metadata"),
    ({"metadata": {"k": "v" * 513}}, "invalid_value", "metadata.k"),
    (_items(_user_msg([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}])),
     "unsupported_content_type", "items[0].content[0].type"),
    (_items(_user_msg([{"type": "input_image", "image_url": "https://example.test/a.png"}])),
     "unsupported_content_type", "items[0].content[0].type"),
    (_items({"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}), "unsupported_content_type",
     "items[0].content[0].type"),
    (_items(_user_msg([{"type": "output_text", "text": "hi"}])), "invalid_value", "items[0].content[0].type"),
    (_items({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}), "unsupported_item_type",
     "items[0].type"),
    (_items({"role": "developer", "content": "Be terse."}), "invalid_value", "items[0].role"),
    (_items({"role": "narrator", "content": "hi"}), "invalid_value", "items[0].role"),
    (_items({"content": "hi"}), "missing_required_parameter", "items[0].role"),
    (_items(_user_msg("   ")), "empty_text", "items[0].content"),
    (_items(_user_msg([])), "empty_array", "items[0].content"),
    (_items(_user_msg("hi", status="in_progress")), "invalid_value", "items[0].status"),
    ({"metadata": {"user": "not valid!"}}, "invalid_user", "metadata.user"),
    ({"metadata": {"channel": "phone"}}, "invalid_value", "metadata.channel"),
    (["not", "an", "object"], "invalid_type", "body"),
]


def test_bad_requests_are_clear_errors_and_write_nothing(world: World) -> None:
    user = new_user("bad")
    api = world.api()
    conv = api.conversations.create(items=[{"role": "user", "content": "Keep me."}], metadata={"user": user})
    before = world.call("GET", "/v1/conversations?limit=100").json()["data"]

    for body, code, param in BAD_CREATES:
        for path in ("/v1/conversations", f"/v1/conversations/{conv.id}/items"):
            if path.endswith("/items") and ("metadata" in body if isinstance(body, dict) else False):
                continue  # (items.create takes no metadata: an unknown parameter, checked below)
            r = world.call("POST", path, json=body)
            assert r.status_code == 400, (path, body, r.text)
            err = r.json()["error"]
            assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error"), (body, err)
            assert err["message"] and "Traceback" not in err["message"]

    for path, body, code, param in [
            (f"/v1/conversations/{conv.id}/items", {"metadata": {}}, "unknown_parameter", "metadata"),
            (f"/v1/conversations/{conv.id}/items", {}, "missing_required_parameter", "items"),
            (f"/v1/conversations/{conv.id}/items", {"items": []}, "empty_array", "items"),
            (f"/v1/conversations/{conv.id}", {}, "missing_required_parameter", "metadata"),
            (f"/v1/conversations/{conv.id}", {"metadata": {"user": "someone-else"}}, "invalid_value", "metadata.user"),
            (f"/v1/conversations/{conv.id}", {"metadata": {"channel": "phone"}}, "invalid_value", "metadata.channel"),
            (f"/v1/conversations/{conv.id}", {"metadata": {}, "items": []}, "unknown_parameter", "items")]:
        r = world.call("POST", path, json=body)
        assert r.status_code == 400 and (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param), \
            (path, body, r.text)
    for raw in (b"{not json", b"[" * 100_000, b"\xff\xfe"):  # not JSON, nested past the parser, not UTF-8
        r = world.call("POST", "/v1/conversations", content=raw)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    r = world.call("POST", "/v1/conversations", headers={"X-Moksori-User": "bad user!"}, json={})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_user"
    r = world.call("POST", "/v1/conversations", headers={"X-Moksori-User": user}, json={"metadata": {"user": "x"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.user"

    # through the SDK: its own error types
    with pytest.raises(openai.BadRequestError, match="at most 20"):
        api.conversations.create(items=[{"role": "user", "content": "hi"}] * 21)
    with pytest.raises(openai.BadRequestError, match="input_audio"):
        api.conversations.items.create(conv.id, items=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])
    with pytest.raises(openai.APIStatusError) as too_big:  # past the 1 MiB body cap every JSON route has
        api.conversations.items.create(conv.id, items=[{"role": "user", "content": "x" * 1_100_000}])
    assert too_big.value.status_code == 413
    for missing in (lambda: api.conversations.items.create("conv_nope", items=[{"role": "user", "content": "hi"}]),
                    lambda: api.conversations.update("conv_nope", metadata={}),
                    lambda: api.conversations.items.delete("msg_nope", conversation_id=conv.id),
                    lambda: api.conversations.items.delete("msg_nope", conversation_id="conv_nope")):
        with pytest.raises(openai.NotFoundError):
            missing()
    r = world.call("POST", "/v1/conversations/conv_%00%ED%A0%80/items", json=_items(_user_msg("hi")))
    assert r.status_code == 404  # an id no database could hold is no conversation: not a 503

    # nothing of it was written
    assert world.call("GET", "/v1/conversations?limit=100").json()["data"] == before
    assert [i.content[0].text for i in api.conversations.items.list(conv.id)] == ["Keep me."]
    assert api.conversations.retrieve(conv.id).metadata == {"channel": "api", "user": user}

    # text no database takes (a NUL; a lone surrogate from a "\\ud800" escape) is stored cleaned, not a 503
    r = world.call("POST", f"/v1/conversations/{conv.id}/items", content=b'{"items": [{"role": "user", '
                   b'"content": "a\\u0000b\\ud800c"}]}', headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["content"][0]["text"] == "ab\ufffdc"


# --------------------------------------------------------------------------- the store away


def test_writes_answer_503_while_the_database_is_away(tmp_path) -> None:
    """PostgreSQL behind a proxy: down when the server starts (the store is retried in the
    background), up, then cut mid-run. Every write answers an OpenAI-style 503 saying so while it
    is away, and works again once it answers; no traceback."""
    from tcp_proxy import TCPProxy

    with postgres_database() as url:
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        host, pg_port = host_port.rsplit(":", 1)
        with TCPProxy(host, int(pg_port)) as proxy:
            proxy.cut()
            port = free_port()
            env = {"MOKSORI_STORE_URL": url.replace(host_port, f"127.0.0.1:{proxy.port}"),
                   "MOKSORI_API_KEYS": K1, "MOKSORI_DATA_DIR": str(tmp_path)}
            with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port,
                               ready_path="/health", env=env) as srv:
                w = World(srv)
                api = w.api()

                def unavailable(r: httpx.Response) -> None:
                    assert r.status_code == 503, r.text
                    err = r.json()["error"]
                    assert (err["type"], err["code"]) == ("server_error", "store_unavailable") and \
                        "unavailable" in err["message"], err

                unavailable(w.call("POST", "/v1/conversations", json=_items(_user_msg("hi"))))
                proxy.restore()  # the start-up retry backs off up to 30 s
                deadline = time.monotonic() + 40
                while (conv := w.call("POST", "/v1/conversations", json={"metadata": {"user": "sam"}})).status_code == 503:
                    assert time.monotonic() < deadline, "the store never came back"
                    time.sleep(0.3)
                conv_id = conv.json()["id"]
                item = api.conversations.items.create(conv_id, items=[{"role": "user", "content": "hi"}]).data[0]

                proxy.cut()  # away mid-run
                unavailable(w.call("POST", "/v1/conversations", json=_items(_user_msg("hi"))))
                unavailable(w.call("POST", f"/v1/conversations/{conv_id}/items", json=_items(_user_msg("hi"))))
                unavailable(w.call("POST", f"/v1/conversations/{conv_id}", json={"metadata": {"a": "b"}}))
                unavailable(w.call("DELETE", f"/v1/conversations/{conv_id}/items/{item.id}"))
                with pytest.raises(openai.InternalServerError):
                    api.conversations.items.create(conv_id, items=[{"role": "user", "content": "hi"}])

                proxy.restore()
                again = api.conversations.items.create(conv_id, items=[{"role": "user", "content": "back"}])
                assert [i.content[0].text for i in api.conversations.items.list(conv_id, order="asc")] == \
                    ["hi", "back"] and again.data[0].content[0].text == "back"
                assert "Traceback" not in srv.log_text()


# --------------------------------------------------------------------------- the store's history walk


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_history_leaves_out_only_the_message_that_cannot_fit(kind, tmp_path) -> None:
    """`Store.load_history`: a message longer than the whole budget is left out on its own (the
    items around it still come); a tool result that long still ends the walk, so that a call is
    never left without its result."""
    with database(kind, tmp_path) as url:
        store = await Store(url, hash_secret=b"test").start()
        t = time.time() - 100
        store.submit(ConversationStarted("c1", "default", "ann", "realtime", t))
        store.submit(UserTurn("c1", "u1", "My cat is called Nabi.", t + 1))
        store.submit(AgentReply("c1", "a1", "Nabi is a lovely name.", t + 2))
        store.submit(UserTurn("c1", "u2", HUGE, t + 3))
        store.submit(AgentReply("c1", "a2", "That is a long text.", t + 4))
        assert await store.flush(20)
        h = await store.load_history("default", "ann", max_tokens=500)
        assert [i.id for i in h.items] == ["u1", "a1", "a2"] and h.skipped == 1 and not h.truncated

        store.submit(UserTurn("c1", "u3", "Read the file.", t + 5))
        store.submit(ToolCallRecord("c1", "fc", "call_1", "read", "{}", t + 6))
        store.submit(ToolResultRecord("c1", "fo", "call_1", HUGE, t + 7))
        store.submit(AgentReply("c1", "a3", "Done.", t + 8))
        assert await store.flush(20)
        h = await store.load_history("default", "ann", max_tokens=500)
        assert [i.id for i in h.items] == [] and h.truncated  # the walk ends at the result: no half exchange
        await store.close()
