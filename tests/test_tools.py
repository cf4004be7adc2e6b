"""Server-side tools against real servers on loopback: the `mcp` SDK's own server over stdio
and Streamable HTTP (tests/mcp_test_server.py), an HTTP tool on a Starlette app, built-ins.

Every failure path must come back as a JSON error the LLM can read, never an exception, and
no MCP child process may outlive `close()`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from moksori.engine.tools import ToolBox
from moksori.errors import ConfigError
from moksori.settings import load_settings
from moksori.tools import MCPConnection, MCPTarget, ServerTools, URLAllowList, build_server_tools
from servers import ServerProcess, ThreadedASGIServer, closed_port, free_port

HERE = Path(__file__).resolve().parent
SERVER = str(HERE / "mcp_test_server.py")
ENV = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def stdio_target(name: str = "test", **kw) -> MCPTarget:
    return MCPTarget(name, command=sys.executable, args=(SERVER, "stdio"), env=ENV, **kw)


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    """The process no longer exists (exited and reaped: not even a zombie)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            time.sleep(0.05)  # a zombie: not reaped yet
            continue
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


# --------------------------------------------------------------------------- MCP over stdio


async def test_stdio_list_call_errors_and_clean_shutdown() -> None:
    conn = MCPConnection(stdio_target())
    try:
        tools = await conn.list_tools(["add", "weather", "slow", "fail", "pid", "nonexistent"])
        assert [t.name for t in tools] == ["add", "weather", "slow", "fail", "pid"]  # the allow-list filters
        add = tools[0]
        assert add.read_only is True and add.input_schema["required"] == ["a", "b"]

        ok = await conn.call("add", {"a": 2, "b": 40}, timeout_s=10)
        assert ok.ok and ok.text == "42"

        failed = await conn.call("fail", {"reason": "nope"}, timeout_s=10)
        assert not failed.ok and failed.kind == "failed" and json.loads(failed.text)["error"].startswith("fail:")

        t0 = time.monotonic()
        slow = await conn.call("slow", {"seconds": 5}, timeout_s=0.5)
        assert not slow.ok and slow.kind == "timeout" and time.monotonic() - t0 < 3
        assert "0.5 s" in json.loads(slow.text)["error"]

        unknown = await conn.call("no_such_tool", {}, timeout_s=5)
        assert not unknown.ok and unknown.kind == "failed"
        # still the same live child after all that
        pid = int((await conn.call("pid", {}, timeout_s=5)).text)
        assert conn.connects == 1
    finally:
        await conn.close()
    assert gone(pid), "the stdio child outlived close()"


async def test_stdio_server_that_dies_mid_call_is_replaced() -> None:
    conn = MCPConnection(stdio_target())
    try:
        first = int((await conn.call("pid", {}, timeout_s=10)).text)
        crashed = await conn.call("crash", {}, timeout_s=10)
        assert not crashed.ok and crashed.kind == "unavailable"
        assert "stopped answering" in json.loads(crashed.text)["error"]
        assert gone(first), "the crashed child was not reaped"
        again = await conn.call("pid", {}, timeout_s=10)  # the next call starts a new child
        assert again.ok and int(again.text) != first and conn.connects == 2
        second = int(again.text)
    finally:
        await conn.close()
    assert gone(second)


async def test_a_server_that_cannot_start_is_an_answer_not_an_exception() -> None:
    conn = MCPConnection(MCPTarget("ghost", command="/nonexistent/mcp-server", connect_timeout_s=5))
    out = await conn.call("anything", {}, timeout_s=2)
    assert not out.ok and out.kind == "unavailable"
    assert "cannot connect to MCP server ghost" in json.loads(out.text)["error"]
    # within the backoff window the server is not respawned in a hot loop
    again = await conn.call("anything", {}, timeout_s=2)
    assert not again.ok and "retrying in" in json.loads(again.text)["error"]
    await conn.close()


# --------------------------------------------------------------------------- MCP over HTTP


@pytest.fixture
def mcp_http():
    port = free_port()
    srv = ServerProcess([sys.executable, SERVER, "http", str(port)], port=port, ready_path="/health",
                        env={"MCP_TEST_TOKEN": "s3cret", **ENV}, ready_timeout_s=60)
    with srv:
        yield srv


async def test_streamable_http_with_headers_from_the_environment(mcp_http, monkeypatch) -> None:
    monkeypatch.setenv("MCP_TOKEN_FOR_TEST", "s3cret")
    settings = load_settings(tools={"builtins": [], "mcp": [
        {"name": "remote", "url": f"{mcp_http.url}/mcp", "headers": {"Authorization": "Bearer ${MCP_TOKEN_FOR_TEST}"},
         "allowed_tools": ["weather", "add"], "timeout_s": 5}]})
    tools, warnings = await build_server_tools(settings.tools)
    try:
        assert warnings == []
        assert sorted(tools.names()) == ["add", "weather"]
        box = ToolBox(tools.engine_tools())
        assert await box.run("weather", json.dumps({"city": "Busan"})) == "Busan: rain, 18 degrees"
        assert await box.run("add", '{"a": 1, "b": 2}') == "3"
    finally:
        await tools.close()

    # a wrong token: the server answers 401 and that is a warning, not a crash
    monkeypatch.setenv("MCP_TOKEN_FOR_TEST", "wrong")
    bad = ServerTools.from_settings(settings.tools)
    try:
        warnings = await bad.start()
        assert bad.names() == [] and warnings and "cannot connect to MCP server remote" in warnings[0]
    finally:
        await bad.close()


async def test_http_server_going_away_and_coming_back(mcp_http) -> None:
    conn = MCPConnection(MCPTarget("remote", url=f"{mcp_http.url}/mcp", headers={"Authorization": "Bearer s3cret"},
                                   connect_timeout_s=5), backoff_s=(0.2, 1.0))
    try:
        assert (await conn.call("add", {"a": 1, "b": 1}, timeout_s=5)).text == "2"
        port = mcp_http.port
        mcp_http.stop()
        down = await conn.call("add", {"a": 1, "b": 1}, timeout_s=5)
        assert not down.ok and down.kind in ("unavailable", "timeout")
        with ServerProcess([sys.executable, SERVER, "http", str(port)], port=port, ready_path="/health",
                           env={"MCP_TEST_TOKEN": "s3cret", **ENV}, ready_timeout_s=60):
            for _ in range(20):  # past the short backoff, the connection is made again
                up = await conn.call("add", {"a": 2, "b": 2}, timeout_s=5)
                if up.ok:
                    break
                await asyncio.sleep(0.3)
            assert up.ok and up.text == "4"
    finally:
        await conn.close()


# --------------------------------------------------------------------------- HTTP tools


class Backend:
    def __init__(self) -> None:
        self.seen: list[tuple[dict, dict]] = []
        self.app = Starlette(routes=[
            Route("/weather", self.weather, methods=["POST"]),
            Route("/slow", self.slow, methods=["POST"]),
            Route("/broken", self.broken, methods=["POST"]),
            Route("/huge", self.huge, methods=["POST"]),
            Route("/moved", self.moved, methods=["POST"]),
            Route("/text", self.text, methods=["POST"]),
        ])

    async def weather(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append((body, dict(request.headers)))
        return JSONResponse({"city": body.get("city"), "forecast": "sunny", "celsius": 21})

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(3)
        return JSONResponse({"late": True})

    async def broken(self, request: Request) -> Response:
        return JSONResponse({"error": {"message": "backend database is down"}}, status_code=503)

    async def huge(self, request: Request) -> Response:
        return PlainTextResponse("y" * 300_000)

    async def moved(self, request: Request) -> Response:
        return RedirectResponse("http://169.254.169.254/latest/meta-data", status_code=307)

    async def text(self, request: Request) -> Response:
        return PlainTextResponse("open until 10 pm")


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    with ThreadedASGIServer(b.app) as srv:
        yield b, srv.url


def http_tools(url: str, **extra) -> ServerTools:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    entries = [
        {"name": "get_weather", "description": "Weather for a city", "url": f"{url}/weather", "parameters": schema,
         "headers": {"X-Api-Key": "${WEATHER_KEY_FOR_TEST}"}},
        {"name": "slow_lookup", "url": f"{url}/slow", "timeout_s": 0.5},
        {"name": "broken_lookup", "url": f"{url}/broken"},
        {"name": "huge_lookup", "url": f"{url}/huge", "max_response_bytes": 65536},
        {"name": "moved_lookup", "url": f"{url}/moved"},
        {"name": "hours", "url": f"{url}/text"},
        {"name": "refused", "url": f"http://127.0.0.1:{closed_port()}/x", "timeout_s": 2},
    ]
    s = load_settings(tools={"builtins": [], "http": entries, **extra})
    return ServerTools.from_settings(s.tools, environ={"WEATHER_KEY_FOR_TEST": "k-123"})


async def test_http_tool_posts_json_with_headers_and_reads_the_answer(backend) -> None:
    b, url = backend
    tools = http_tools(url)
    try:
        box = ToolBox(tools.engine_tools())
        out = json.loads(await box.run("get_weather", json.dumps({"city": "서울"})))
        assert out == {"city": "서울", "forecast": "sunny", "celsius": 21}
        body, headers = b.seen[-1]
        assert body == {"city": "서울"} and headers["x-api-key"] == "k-123"
        assert headers["content-type"] == "application/json"
        assert await box.run("hours", "{}") == "open until 10 pm"
        spec = next(s for s in tools.specs() if s.name == "get_weather")
        assert spec.description == "Weather for a city" and spec.parameters["required"] == ["city"]
    finally:
        await tools.close()


@pytest.mark.parametrize("name,args,kind,needle", [
    ("slow_lookup", {}, "timeout", "did not answer within 0.5 s"),
    ("broken_lookup", {}, "failed", "HTTP 503: backend database is down"),
    ("huge_lookup", {}, "too_large", "larger than 65536 bytes"),
    ("moved_lookup", {}, "failed", "redirect (HTTP 307)"),
    ("refused", {}, "unavailable", "cannot reach 127.0.0.1"),
    ("get_weather", {"town": "Seoul"}, "bad_arguments", "'city' is a required property"),
    ("get_weather", {"city": 7}, "bad_arguments", "at city"),
])
async def test_http_tool_failures_are_json_errors(backend, name, args, kind, needle) -> None:
    _, url = backend
    tools = http_tools(url)
    try:
        t0 = time.monotonic()
        out = await tools.run(name, args)
        assert not out.ok and out.kind == kind
        err = json.loads(out.text)
        assert err["kind"] == kind and needle in err["error"], err
        assert time.monotonic() - t0 < 2.5  # a slow tool never holds the turn past its timeout
    finally:
        await tools.close()


def test_http_tool_config_errors(monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match=r"\$\{NOT_SET_ANYWHERE\}"):
        ServerTools.from_settings(load_settings(tools={"http": [
            {"name": "x", "url": "http://127.0.0.1:9/x", "headers": {"A": "${NOT_SET_ANYWHERE}"}}]}).tools)
    with pytest.raises(ConfigError, match="already used"):
        ServerTools.from_settings(load_settings(tools={"http": [
            {"name": "current_time", "url": "http://127.0.0.1:9/x"}]}).tools)
    with pytest.raises(ConfigError, match="http"):
        ServerTools.from_settings(load_settings(tools={"http": [{"name": "x", "url": "ftp://example.com/x"}]}).tools)
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        ServerTools.from_settings(load_settings(tools={"http": [
            {"name": "x", "url": "http://127.0.0.1:9/x",
             "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}]}).tools)
    with pytest.raises(ConfigError, match="exactly one of command"):
        load_settings(tools={"mcp": [{"name": "both", "command": "x", "url": "http://127.0.0.1:9/mcp"}]})


# --------------------------------------------------------------------------- set, names, built-ins


async def test_name_collisions_and_reserved_names(backend) -> None:
    _, url = backend
    s = load_settings(tools={"http": [{"name": "add", "url": f"{url}/text"}],
                             "mcp": [{"name": "calc", "command": sys.executable, "args": [SERVER, "stdio"],
                                      "env": ENV, "allowed_tools": ["add", "pid", "weather"]}]})
    tools = ServerTools.from_settings(s.tools, reserved=["weather", "calc_weather"])
    try:
        warnings = await tools.start()
        names = tools.names()
        assert names[:2] == ["current_time", "add"]
        assert "calc_add" in names and "pid" in names  # the MCP `add` is renamed, `pid` keeps its name
        assert "weather" not in names and "calc_weather" not in names  # both names taken: not offered
        assert any("offered as calc_add" in w for w in warnings)
        assert any("weather" in w and "not offered" in w for w in warnings)
        box = ToolBox(tools.engine_tools())
        assert await box.run("calc_add", '{"a": 3, "b": 4}') == "7"  # reaches the MCP tool `add`
        assert await box.run("add", "{}") == "open until 10 pm"  # the HTTP tool
        info = tools.info("calc_add")
        assert info.source == "mcp" and info.remote_name == "add" and info.server == "calc"
    finally:
        await tools.close()


def test_current_time_in_the_configured_zone() -> None:
    fixed = dt.datetime(2026, 12, 31, 15, 30, tzinfo=dt.timezone.utc)
    tools = ServerTools(timezone="Asia/Seoul", now=lambda: fixed)
    out = json.loads(asyncio.run(tools.run("current_time", {})).text)
    assert out["date"] == "2027-01-01" and out["time"] == "00:30" and out["timezone"] == "Asia/Seoul"
    assert out["weekday"] == "Friday" and out["weekday_ko"] == "금요일" and out["utc_offset"] == "+0900"
    with pytest.raises(ConfigError, match="IANA"):
        ServerTools(timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="unknown built-in"):
        ServerTools(builtin_names=["coffee"])


async def test_unknown_tool_and_bad_arguments_never_raise() -> None:
    tools = ServerTools()
    assert json.loads((await tools.run("nope", {})).text)["kind"] == "failed"
    assert json.loads((await tools.run("current_time", [1, 2])).text)["kind"] == "bad_arguments"  # type: ignore[arg-type]


def test_tools_from_a_toml_file(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "moksori.toml"
    cfg.write_text(
        '[tools]\ntimezone = "Asia/Seoul"\nrealtime_mcp_allow = ["http://127.0.0.1:8765/mcp"]\n'
        '[[tools.mcp]]\nname = "files"\ncommand = "python"\nargs = ["server.py"]\nallowed_tools = ["read"]\n'
        'timeout_s = 3\n'
        '[[tools.mcp]]\nname = "crm"\nurl = "https://crm.example.com/mcp"\n'
        'headers = { Authorization = "Bearer ${CRM_TOKEN}" }\n'
        '[[tools.http]]\nname = "get_weather"\ndescription = "Weather"\nurl = "https://w.example.com/now"\n'
        'parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }\n',
        encoding="utf-8")
    monkeypatch.setenv("MOKSORI_CONFIG", str(cfg))
    s = load_settings().tools
    assert s.timezone == "Asia/Seoul" and s.realtime_mcp_allow == ["http://127.0.0.1:8765/mcp"]
    assert [m.name for m in s.mcp] == ["files", "crm"] and s.mcp[0].allowed_tools == ["read"]
    assert s.mcp[0].timeout_s == 3 and s.mcp[1].headers == {"Authorization": "Bearer ${CRM_TOKEN}"}
    assert s.http[0].parameters["required"] == ["city"]
    tools = ServerTools.from_settings(s, environ={"CRM_TOKEN": "t"})
    assert tools.names() == ["current_time", "get_weather"]  # MCP tools come with start()


# --------------------------------------------------------------------------- Realtime MCP allow-list


@pytest.mark.parametrize("url,allowed", [
    ("http://127.0.0.1:8765/mcp", True),
    ("http://127.0.0.1:8765/mcp/", True),
    ("http://127.0.0.1:8765/mcpx", False),
    ("http://127.0.0.1:8766/mcp", False),
    ("https://127.0.0.1:8765/mcp", False),
    ("https://mcp.example.com/anything/here", True),
    ("https://MCP.Example.COM./x", True),
    ("https://mcp.example.com.evil.net/x", False),
    ("https://user:pw@mcp.example.com/x", False),
    ("https://mcp.example.com:444/x", False),
    ("http://169.254.169.254/latest/meta-data", False),
    ("file:///etc/passwd", False),
    ("not a url", False),
])
def test_realtime_mcp_allow_list(url, allowed) -> None:
    allow = URLAllowList(["http://127.0.0.1:8765/mcp", "https://mcp.example.com/"])
    assert (allow.check(url) is None) is allowed


def test_realtime_mcp_allow_list_defaults_to_none() -> None:
    empty = URLAllowList(load_settings().tools.realtime_mcp_allow)
    assert not empty and "allow" in empty.check("http://127.0.0.1:8765/mcp")
    with pytest.raises(ConfigError):
        URLAllowList(["ftp://x"])


async def test_a_cancelled_call_leaves_the_connection_usable() -> None:
    """A barge-in cancels the response while a tool runs: the call is cancelled, the server
    stays connected and answers the next call."""
    conn = MCPConnection(stdio_target())
    try:
        assert (await conn.call("add", {"a": 1, "b": 1}, timeout_s=10)).ok
        task = asyncio.create_task(conn.call("slow", {"seconds": 5}, timeout_s=10))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        after = await conn.call("add", {"a": 2, "b": 3}, timeout_s=10)
        assert after.ok and after.text == "5" and time.monotonic() - t0 < 3
        assert conn.connects == 1
    finally:
        await conn.close()


async def test_a_server_that_died_while_idle_is_replaced_before_the_next_call() -> None:
    import signal

    conn = MCPConnection(stdio_target(), ping_after_s=0.0)
    try:
        first = int((await conn.call("pid", {}, timeout_s=10)).text)
        os.kill(first, signal.SIGKILL)
        assert gone(first)
        out = await conn.call("add", {"a": 20, "b": 22}, timeout_s=10)  # the ping finds it dead
        assert out.ok and out.text == "42" and conn.connects == 2
        second = int((await conn.call("pid", {}, timeout_s=10)).text)
        assert second != first
    finally:
        await conn.close()
    assert gone(second)


def test_the_tools_command_lists_and_calls_for_real(tmp_path) -> None:
    import subprocess

    cfg = tmp_path / "moksori.toml"
    cfg.write_text(
        '[tools]\ntimezone = "Asia/Seoul"\n'
        f'[[tools.mcp]]\nname = "test"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER)}, "stdio"]\n'
        f'env = {{ PYTHONPATH = {json.dumps(ENV["PYTHONPATH"])} }}\nallowed_tools = ["add", "weather"]\n'
        '[[tools.mcp]]\nname = "ghost"\ncommand = "/nonexistent/server"\nconnect_timeout_s = 3\n',
        encoding="utf-8")
    env = {**os.environ, "MOKSORI_CONFIG": str(cfg)}
    cmd = [sys.executable, "-m", "moksori", "tools", "--json", "--call", "add", "--args", '{"a": 5, "b": 6}']
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [t["name"] for t in out["tools"]] == ["current_time", "add", "weather"]
    assert out["call"]["ok"] and out["call"]["text"] == "11"
    assert any("ghost" in w for w in out["warnings"])
    bad = subprocess.run([sys.executable, "-m", "moksori", "tools", "--call", "add", "--args", "[1]"], env=env,
                         capture_output=True, text=True, timeout=90)
    assert bad.returncode == 2 and "--args must be a JSON object" in bad.stderr
