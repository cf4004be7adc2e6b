"""Odd input at the HTTP API's edges, against the real app (fake models) on PostgreSQL:

* a client that hangs up mid-body is a quiet no-op on every route that reads its own body;
* ids no database can hold (a NUL, a lone surrogate) are a 404 / 400 without asking it;
* a user whose id holds "/" can be erased;
* an ephemeral key holds a bounded session config (and the in-process store bounded bytes);
* a typed item holding a lone surrogate is echoed (escaped) and answered, not the end of the session.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from databases import postgres_database
from moksori.server.ephemeral_keys import MAX_SESSION_BYTES, MemoryKeyStore, StoreFull, new_key
from moksori.store import ConversationStarted, Store, UserTurn, tenant_id
from servers import ServerProcess, free_port

HERE = Path(__file__).parent
KEY = "sk-limits"
H = {"Authorization": f"Bearer {KEY}"}


async def populate(url: str) -> None:
    """One conversation of the user "team/alice" (user ids may hold "/")."""
    store = Store(url, hash_secret=b"test")
    await store.start()
    now = time.time()
    store.submit(ConversationStarted("conv_t", tenant_id(KEY), "team/alice", "realtime", now))
    store.submit(UserTurn("conv_t", "item_t1", "Hello.", now + 1, language="en"))
    assert await store.flush(20)
    await store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    with postgres_database() as url:
        asyncio.run(populate(url))
        port = free_port()
        env = {"MOKSORI_STORE_URL": url, "MOKSORI_API_KEYS": KEY, "MOKSORI_DATA_DIR": str(tmp),
               "PYTHONUNBUFFERED": "1"}
        with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port,
                           ready_path="/health", env=env, ready_timeout_s=60) as srv:
            yield srv


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(server) -> None:
    routes = [("/session", "application/json"), ("/v1/realtime/client_secrets", "application/json"),
              ("/v1/realtime/calls", "application/sdp"), ("/v1/telephony/calls/CA1/transfer", "application/json")]
    for path, ctype in routes:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                      f"Content-Type: {ctype}\r\nContent-Length: 5000\r\n\r\n".encode() + b'{"session": {')
            time.sleep(0.2)  # the route is reading the body when we leave
    time.sleep(0.5)
    # the server still answers, and said nothing about the clients that left
    assert httpx.get(server.url + "/health").status_code == 200
    log = server.log_text()
    assert "ClientDisconnect" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/conversations/%00", 404),
    ("DELETE", "/v1/conversations/%00", 404),
    ("GET", "/v1/conversations/%00/items", 404),
    ("GET", "/v1/conversations/%00/usage", 404),
    ("GET", "/v1/conversations/conv_t/items/%00", 404),
    ("GET", "/v1/conversations/conv_t/items?after=%00", 400),
    ("GET", "/v1/conversations?after=%00", 400),
])
def test_ids_no_database_can_hold_are_not_found_without_asking_it(server, method, path, status) -> None:
    r = httpx.request(method, server.url + path, headers=H)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    assert "SQL" not in server.log_text() and "store: read failed" not in server.log_text()


def test_lone_surrogates_are_not_storable_ids() -> None:
    # a request path cannot carry one (the server decodes it with replacement), so check the helper
    from moksori.text.unencodable import encodable

    assert encodable("conv_a") and encodable("지하철")
    assert not encodable("conv\x00") and not encodable("conv\ud800")


@pytest.mark.parametrize("source, expected", [
    ('{"a": "\\ud800x"}', {"a": "\ufffdx"}),            # ASCII text with the escape
    ('{"a": "\\uD83D"}', {"a": "\ufffd"}),              # upper-case hex
    ('{"a": "\ud800", "b": "지하철"}', {"a": "\ufffd", "b": "지하철"}),  # a surrogate in the text itself
    ('{"\\udc00": ["\\ud83d\\ude00"]}', {"\ufffd": ["\U0001f600"]}),  # a key; a pair is no lone surrogate
])
def test_a_client_s_json_has_its_lone_surrogates_replaced(source: str, expected: object) -> None:
    from moksori.text.unencodable import surrogates_replaced

    assert surrogates_replaced(json.loads(source), source) == expected


def test_clean_json_is_returned_as_parsed() -> None:
    """The common case (every audio append) skips the walk: the very object comes back."""
    from moksori.text.unencodable import surrogates_replaced

    for source in ('{"audio": "AAAA//8="}', '{"text": "\\uc548\\ub155"}', '{"text": "안녕"}'):
        value = json.loads(source)
        assert surrogates_replaced(value, source) is value


def test_a_user_whose_id_holds_a_slash_can_be_erased(server) -> None:
    assert httpx.get(server.url + "/v1/conversations", params={"user": "team/alice"}, headers=H).status_code == 200
    erased = httpx.delete(server.url + "/v1/users/team/alice", headers=H)
    assert erased.status_code == 200, erased.text
    assert erased.json()["id"] == "team/alice" and erased.json()["conversations"] == 1
    assert httpx.get(server.url + "/v1/conversations", params={"user": "team/alice"}, headers=H).status_code == 404
    # encoded the same; still the API's own errors for a user that is not there or not valid
    gone = httpx.delete(server.url + "/v1/users/team%2Falice", headers=H)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert httpx.delete(server.url + "/v1/users/bad%20id", headers=H).status_code == 400


def test_an_ephemeral_key_holds_a_bounded_session_config(server) -> None:
    big = {"session": {"type": "realtime", "instructions": "x" * (MAX_SESSION_BYTES + 1)}}
    for path in ("/v1/realtime/client_secrets", "/session"):
        r = httpx.post(server.url + path, json=big, headers=H)
        assert r.status_code == 400, r.text
        assert str(MAX_SESSION_BYTES) in r.json()["error"]["message"] and r.json()["error"]["param"] == "session"
    # a long real prompt (tens of KB, Korean) is fine
    ok = httpx.post(server.url + "/v1/realtime/client_secrets",
                    json={"session": {"type": "realtime", "instructions": "안녕하세요. " * 8000}}, headers=H)
    assert ok.status_code == 200, ok.text
    assert ok.json()["value"].startswith("ek_")


async def test_the_key_store_caps_the_bytes_its_keys_hold() -> None:
    now = [1000.0]
    store = MemoryKeyStore(max_bytes=3000, clock=lambda: now[0])
    session = {"instructions": "y" * 900}
    await store.put(new_key(60, session, now=now[0]))
    await store.put(new_key(120, session, now=now[0]))
    await store.put(new_key(120, session, now=now[0]))
    with pytest.raises(StoreFull, match="bytes"):
        await store.put(new_key(60, session, now=now[0]))
    assert len(store) == 3
    now[0] += 61  # the first key expires: its bytes are free again
    await store.put(new_key(60, session, now=now[0]))
    assert len(store) == 3 and store.bytes <= 3000


async def test_a_lone_surrogate_in_a_typed_item_does_not_end_the_session(server) -> None:
    """A client's `\\ud800` escape is valid JSON and reaches the item as a lone surrogate. Echoed
    in `conversation.item.added`, it had no UTF-8 form: the send raised, the session took that
    for a client that is not reading and closed it (1008). Now the parser replaces it with U+FFFD
    (`tests/test_abuse.py`: the embedded LLM's tokenizer failed on it too) and the session answers."""
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=m"
    async with websockets.connect(url, additional_headers=H) as ws:
        item = ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
                '"content": [{"type": "input_text", "text": "hi \\ud800 there"}]}}')
        await ws.send(item)
        await ws.send('{"type": "response.create"}')
        seen: dict[str, dict] = {}
        while "response.done" not in seen:
            event = json.loads(await asyncio.wait_for(ws.recv(), 20))
            seen.setdefault(event["type"], event)
        assert seen["response.done"]["response"]["status"] == "completed", seen["response.done"]
        added = seen["conversation.item.added"]["item"]["content"][0]["text"]
        assert added == "hi \ufffd there"  # replaced at the door: the LLM reads the same
