"""`moksori serve` as a server: auth, limits, hostile input and disconnects, over real sockets.

One `moksori serve` per module, on 127.0.0.1, with API keys from both sources (`MOKSORI_API_KEYS`
and a `MOKSORI_API_KEYS_FILE`), a small per-key session limit and a small message limit. Its LLM
is `tests/scripted_llm_server.py` on loopback (`MOKSORI_LLM_PROVIDER=openai`,
`MOKSORI_LLM_BASE_URL=http://127.0.0.1:<p>/v1`), so a reply of a known length can be asked for;
everything else is the embedded stack. The client is the plain `websockets` library, which lets
these tests put keys where real clients put them and send what no SDK would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted_llm_server import ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from moksori.protocols.realtime import CLIENT_EVENT_TYPES

pytestmark = [pytest.mark.models]

KEY = "sk-moksori-server-1"
FILE_KEY = "sk-moksori-from-file-2"
PER_KEY = 3
MAX_MESSAGE = 64 * 1024
FUZZ_EXAMPLES = int(os.environ.get("MOKSORI_FUZZ_EXAMPLES", "60"))  # raise it for a deeper local run


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted_llm):
    data_dir = prepared_data_dir(tmp_path_factory)
    cwd = tmp_path_factory.mktemp("serve")
    keys_file = cwd / "keys.txt"
    keys_file.write_text(f"# one key per line\n\n{FILE_KEY}\n", encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": KEY, "MOKSORI_API_KEYS_FILE": str(keys_file),
           "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": str(PER_KEY), "MOKSORI_SERVER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
           "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": scripted_llm.url,
           "MOKSORI_LLM_MODEL": "scripted", "PYTHONUNBUFFERED": "1"}
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, env=env, cwd=cwd) as srv:
        yield srv


def ws_url(server, path: str = "/v1/realtime", query: str = "model=gpt-realtime") -> str:
    return f"ws://127.0.0.1:{server.port}{path}?{query}"


def health(server) -> dict[str, Any]:
    """The readiness report (`/ready` needs a key on a server with keys; `/health` names nothing)."""
    req = urllib.request.Request(server.url + "/ready", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:  # 503 while shedding: the body is the same report
        return json.loads(e.read())


def wait_sessions(server, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while health(server)["sessions"] != n:
        assert time.monotonic() < deadline, f"sessions stayed at {health(server)['sessions']}, expected {n}"
        time.sleep(0.05)


async def await_sessions(server, n: int, timeout: float = 10.0) -> None:
    """`wait_sessions` for async tests: the event loop must keep running (sockets close in it)."""
    await asyncio.to_thread(wait_sessions, server, n, timeout)


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def recv_json(ws, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, typ: str, timeout: float = 10.0, pred=lambda e: True) -> tuple[dict, list[dict]]:
    """The first event of type `typ` (matching `pred`), and everything received before it."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {typ} within {timeout:g} s; got {[e['type'] for e in seen][-20:]}"
        e = await recv_json(ws, left)
        if e["type"] == typ and pred(e):
            return e, seen
        seen.append(e)


async def probe(ws, marker: str, timeout: float = 10.0) -> list[dict]:
    """A session.update that must be answered; returns the events received on the way."""
    await ws.send(json.dumps({"type": "session.update", "event_id": f"probe-{marker}",
                              "session": {"type": "realtime", "instructions": f"probe {marker}"}}))
    _, seen = await recv_until(ws, "session.updated", timeout,
                               lambda e: e["session"].get("instructions") == f"probe {marker}")
    return seen


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("how", ["none", "wrong-bearer", "wrong-api-key", "wrong-subprotocol", "wrong-query",
                                 "empty-bearer"])
async def test_bad_or_missing_key_is_rejected_at_the_handshake(server, how):
    kwargs: dict[str, Any] = {}
    url = ws_url(server)
    if how == "wrong-bearer":
        kwargs["additional_headers"] = bearer("sk-nope")
    elif how == "empty-bearer":
        kwargs["additional_headers"] = {"Authorization": "Bearer "}
    elif how == "wrong-api-key":
        kwargs["additional_headers"] = {"api-key": "sk-nope"}
    elif how == "wrong-subprotocol":
        kwargs["subprotocols"] = ["realtime", "openai-insecure-api-key.sk-nope"]
    elif how == "wrong-query":
        url += "&api-key=sk-nope"
    with pytest.raises(InvalidStatus) as exc:
        async with connect(url, **kwargs):
            pass
    assert exc.value.response.status_code == 403
    await await_sessions(server, 0)  # nothing was accepted


async def test_rejected_before_any_event_with_the_openai_sdk(server):
    from openai import AsyncOpenAI

    before = _metric(server, "moksori_auth_failures_total")
    client = AsyncOpenAI(api_key="sk-wrong", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)
    with pytest.raises(Exception) as exc:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.recv()
    assert "403" in str(exc.value)
    assert _metric(server, "moksori_auth_failures_total") == before + 1


def _metric(server, name: str) -> float:
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("how", ["bearer", "api-key", "subprotocol", "subprotocol-beta", "query", "file-key",
                                 "voice-live-api-key"])
async def test_each_key_placement_is_accepted(server, how):
    kwargs: dict[str, Any] = {}
    url = ws_url(server)
    if how == "bearer":
        kwargs["additional_headers"] = bearer()
    elif how == "file-key":
        kwargs["additional_headers"] = bearer(FILE_KEY)
    elif how == "api-key":
        kwargs["additional_headers"] = {"api-key": KEY}
    elif how == "voice-live-api-key":
        url = ws_url(server, "/voice-live/realtime", "api-version=2025-10-01&model=gpt-realtime")
        kwargs["additional_headers"] = {"api-key": KEY}
    elif how == "subprotocol":
        kwargs["subprotocols"] = ["realtime", f"openai-insecure-api-key.{KEY}"]
    elif how == "subprotocol-beta":
        kwargs["subprotocols"] = ["realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1"]
    elif how == "query":
        url += f"&api-key={KEY}"
    async with connect(url, **kwargs) as ws:
        first = await recv_json(ws)
        assert first["type"] == "session.created" and first["event_id"]
        if how.startswith("subprotocol"):
            assert ws.subprotocol == "realtime"  # the browser needs the server to pick it
        if how == "subprotocol-beta":
            assert first["session"]["input_audio_format"] == "pcm16"  # beta: the flat session
        elif how != "voice-live-api-key":
            assert first["session"]["type"] == "realtime"  # GA
        if how == "voice-live-api-key":
            assert "input_audio_format" in first["session"]  # Azure: the flat session
    await await_sessions(server, 0)


def test_serve_refuses_a_public_bind_without_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_API_KEYS")}
    env["MOKSORI_DATA_DIR"] = str(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moksori", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "refusing" in lines[0] and "0.0.0.0" in lines[0] and "MOKSORI_API_KEYS" in lines[0]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30  # it refused before loading any model


@pytest.mark.parametrize(("url", "said"), [("mysql://root@127.0.0.1/test", "unsupported store database 'mysql'"),
                                           ("::::", "not a database URL")])
def test_serve_refuses_a_store_url_it_cannot_use(tmp_path, url, said):
    """A store URL naming a database Moksori does not support (or not a URL at all) stopped
    nothing: the server ran, logging that conversations were not stored. It is a one-line
    error before any model loads, as other configuration mistakes are."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
    env.update(MOKSORI_DATA_DIR=str(tmp_path), MOKSORI_STORE_URL=url)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moksori", "serve", "--port", str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and said in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30


# --------------------------------------------------------------------------- limits


async def test_sessions_per_key_limit(server):
    await await_sessions(server, 0)
    open_ws = []
    try:
        for _ in range(PER_KEY):
            ws = await connect(ws_url(server), additional_headers=bearer())
            open_ws.append(ws)
            assert (await recv_json(ws))["type"] == "session.created"
        with pytest.raises(InvalidStatus) as exc:
            async with connect(ws_url(server), additional_headers=bearer()):
                pass
        # a limit, not an auth failure: 503 with Retry-After and a JSON reason
        assert exc.value.response.status_code == 503
        assert exc.value.response.headers["Retry-After"]
        assert json.loads(exc.value.response.body)["error"]["code"] == "too_many_sessions"
        # a refusal is load shedding, not a server error: uvicorn logged an ERROR for each one
        assert "without completing handshake" not in server.log_text()
        # another key has its own allowance
        async with connect(ws_url(server), additional_headers=bearer(FILE_KEY)) as other:
            assert (await recv_json(other))["type"] == "session.created"
        # and a slot frees up when a session ends
        await open_ws.pop().close()
        await await_sessions(server, PER_KEY - 1)
        ws = await connect(ws_url(server), additional_headers=bearer())
        open_ws.append(ws)
        assert (await recv_json(ws))["type"] == "session.created"
    finally:
        for ws in open_ws:
            await ws.close()
    await await_sessions(server, 0)


async def test_oversized_message_gets_an_error_and_the_session_lives(server):
    async with connect(ws_url(server), additional_headers=bearer()) as ws:
        await recv_until(ws, "session.created")
        big = base64.b64encode(np.zeros(MAX_MESSAGE, np.int16).tobytes()).decode()  # ~2.7x the limit
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "event_id": "big-1", "audio": big}))
        err, _ = await recv_until(ws, "error")
        assert err["error"]["message"] and str(MAX_MESSAGE) in err["error"]["message"] or \
            "too large" in err["error"]["message"].lower(), err
        await probe(ws, "after-big")
        # just under the limit is fine
        ok = base64.b64encode(np.zeros(MAX_MESSAGE // 4, np.int16).tobytes()).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": ok}))
        seen = await probe(ws, "after-ok")
        assert not [e for e in seen if e["type"] == "error"], seen


BAD_MESSAGES = [
    ("{not json", "invalid_json"),
    ("[1, 2, 3]", None),
    ('"just a string"', None),
    ('{"event_id": "x"}', None),
    ('{"type": 42}', None),
    ('{"type": "no.such.event", "event_id": "evt-unknown"}', None),
    ('{"type": "session.update", "session": "not an object"}', None),
    ('{"type": "session.update", "session": {"type": "realtime", "instructions": 5}}', None),
    ('{"type": "input_audio_buffer.append", "audio": 17}', None),
    ('{"type": "input_audio_buffer.append", "audio": "!!!not base64!!!"}', None),
    ('{"type": "input_audio_buffer.append", "audio": "AAE"}', None),
    ('{"type": "conversation.item.create", "item": {"type": "message", "role": "pirate"}}', None),
    ('{"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": -5}', None),
    ('{"type": "conversation.item.delete", "item_id": "missing"}', "item_not_found"),
    ('{"type": "response.create", "response": {"temperature": "hot"}}', None),
    ('{"type": "response.cancel"}', "response_cancel_not_active"),
    ('{"type": "input_audio_buffer.commit"}', None),
]


async def test_malformed_unknown_and_wrongly_typed_events_get_errors(server):
    async with connect(ws_url(server), additional_headers=bearer()) as ws:
        await recv_until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime",
                                                                       "audio": {"input": {"turn_detection": None}}}}))
        await recv_until(ws, "session.updated")
        for raw, code in BAD_MESSAGES:
            await ws.send(raw)
            err, seen = await recv_until(ws, "error")
            assert not seen, (raw, seen)
            assert isinstance(err["error"]["message"], str) and err["error"]["message"], raw
            assert err["error"]["type"] == "invalid_request_error", (raw, err)  # not a server bug
            if code:
                assert err["error"]["code"] == code, (raw, err)
            if "evt-unknown" in raw:
                assert err["error"]["event_id"] == "evt-unknown"
        await probe(ws, "after-bad")


async def test_binary_frames(server):
    async with connect(ws_url(server), additional_headers=bearer()) as ws:
        await recv_until(ws, "session.created")
        await ws.send(b"\x00\xff\x10 binary garbage")
        err, _ = await recv_until(ws, "error")
        assert err["error"]["type"] == "invalid_request_error"
        # a JSON event in a binary frame is read as UTF-8 JSON
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime",
                                                                       "instructions": "binary ok"}}).encode())
        upd, seen = await recv_until(ws, "session.updated")
        assert upd["session"]["instructions"] == "binary ok" and not seen
        await probe(ws, "after-binary")


@pytest.mark.parametrize("when", ["mid-response", "mid-append"])
async def test_disconnect_leaves_the_server_healthy(server, when):
    await await_sessions(server, 0)
    ws = await connect(ws_url(server), additional_headers=bearer())
    await recv_until(ws, "session.created")
    if when == "mid-response":
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": "scripted:long", "audio": {"input": {"turn_detection": None}}}}))
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        await recv_until(ws, "response.output_audio.delta", timeout=20)
    else:
        chunk = base64.b64encode(np.zeros(960, np.int16).tobytes()).decode()
        for _ in range(20):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
    assert health(server)["sessions"] == 1
    ws.transport.abort()  # no close handshake: the network just went away
    await await_sessions(server, 0)
    # and it still serves
    async with connect(ws_url(server), additional_headers=bearer()) as ws2:
        await recv_until(ws2, "session.created")
        await probe(ws2, f"after-{when}")
    await await_sessions(server, 0)
    assert health(server)["status"] == "ready" and health(server)["unclosed_sessions"] == 0


# --------------------------------------------------------------------------- fuzz

json_scalars = (st.none() | st.booleans() | st.integers(-(2**40), 2**40)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
FIELDS = ["session", "item", "response", "audio", "item_id", "content_index", "audio_end_ms", "previous_item_id",
          "response_id", "event_id"]
field_values = {
    "session": st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["realtime", "transcription", "bogus"]),
        "instructions": st.text(max_size=20) | json_scalars,
        "output_modalities": st.sampled_from([["text"], ["audio"], ["video"], []]) | json_values,
        "voice": st.sampled_from(["alloy", "en-US-AvaNeural", "ko-KR-SunHiNeural", ""]) | json_values,
        "audio": json_values | st.just({"input": {"turn_detection": None}})
        | st.just({"input": {"format": {"type": "audio/pcmu"}}}),
        "tools": json_values, "tool_choice": json_values, "temperature": json_values,
        "max_output_tokens": st.sampled_from(["inf", 0, 5, -1, 10**9]) | json_scalars,
    }),
    "item": json_values | st.fixed_dictionaries({"type": st.sampled_from(["message", "function_call",
                                                                            "function_call_output", "bogus"])},
                                                 optional={"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                                           "content": json_values, "id": json_scalars,
                                                           "call_id": json_scalars, "output": json_scalars}),
    "response": json_values | st.fixed_dictionaries({}, optional={
        "output_modalities": json_values, "instructions": json_scalars, "conversation": json_scalars,
        "max_output_tokens": json_scalars, "input": json_values, "metadata": json_values}),
    "audio": st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode()) | json_scalars,
}


@st.composite
def client_events(draw) -> str | bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=80))
    if kind == 1:
        return draw(st.binary(max_size=80))
    if kind == 2:
        return json.dumps(draw(json_values))
    typ = draw(st.sampled_from(sorted(CLIENT_EVENT_TYPES)) | st.text(max_size=12))
    event: dict[str, Any] = {"type": typ}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        event[name] = draw(field_values.get(name, json_values))
    return json.dumps(event)


@pytest.mark.parametrize("flavor", ["ga", "beta", "azure"])
def test_fuzzed_client_events_never_break_a_live_session(server, flavor):
    """Random events, valid-shaped and garbage, over one live connection: after each, the
    connection is still open, nothing was reported as a server bug, and a session.update is
    still answered. (A synchronous client, so hypothesis can run and shrink examples itself.)"""
    from websockets.sync.client import connect as sync_connect

    url, headers = ws_url(server), bearer()
    if flavor == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    elif flavor == "azure":
        url, headers = ws_url(server, "/voice-live/realtime", "api-version=2025-10-01&model=gpt-realtime"), {"api-key": KEY}
    with sync_connect(url, additional_headers=headers, max_size=None) as ws:
        def recv_until_sync(typ: str, pred, timeout: float = 20.0) -> list[dict]:
            seen: list[dict] = []
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"no {typ} within {timeout:g} s; got {[e['type'] for e in seen][-20:]}"
                e = json.loads(ws.recv(timeout=left))
                if e["type"] == typ and pred(e):
                    return seen
                seen.append(e)

        recv_until_sync("session.created", lambda e: True)
        counter = iter(range(10**6))

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(client_events())
        def one(raw):
            marker = f"probe {next(counter)}"
            ws.send(raw)
            ws.send(json.dumps({"type": "session.update", "session": {"instructions": marker}}))
            seen = recv_until_sync("session.updated", lambda e: e["session"].get("instructions") == marker)
            bugs = [e for e in seen if e["type"] == "error" and e["error"].get("type") == "server_error"]
            assert not bugs, bugs

        one()
        ws.send(json.dumps({"type": "response.cancel"}))  # whatever may still be running
        ws.send(json.dumps({"type": "session.update", "session": {"instructions": "final"}}))
        recv_until_sync("session.updated", lambda e: e["session"].get("instructions") == "final")
    wait_sessions(server, 0)
    assert "Traceback" not in server.log_text()
