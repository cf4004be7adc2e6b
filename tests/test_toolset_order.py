"""Naming of MCP tools by config order, whatever server answers first, and the cap on the tools
offered in all (`moksori.tools.toolset`). Fake connections: the order of the answers is the test."""

from __future__ import annotations

import asyncio
import logging

import pytest

from moksori.errors import ConfigError
from moksori.tools import MCPTarget, ServerTools
from moksori.tools.mcp_client import MCPToolInfo, MCPUnavailable


class FakeConn:
    """Answers `list_tools` once `gate` is set (right away when there is none); `down` raises."""

    def __init__(self, names: list[str], gate: asyncio.Event | None = None, *, down: bool = False) -> None:
        self.names = names
        self.gate = gate
        self.down = down
        self.answered = asyncio.Event()
        self.calls: list[str] = []

    async def list_tools(self, allowed=None, *, timeout_s: float = 10.0) -> list[MCPToolInfo]:
        if self.gate is not None:
            await self.gate.wait()
        self.answered.set()
        if self.down:
            raise MCPUnavailable("MCP server is down")
        return [MCPToolInfo(n, f"{n} tool", {"type": "object", "properties": {}}) for n in self.names]

    async def call(self, name, arguments, *, timeout_s, max_chars=4000):  # pragma: no cover - unused
        raise AssertionError

    async def close(self) -> None:
        pass


def add(tools: ServerTools, name: str, conn: FakeConn) -> None:
    tools.add_mcp(MCPTarget(name, command="unused"), connection=conn)  # type: ignore[arg-type]


def owners(tools: ServerTools) -> dict[str, str | None]:
    return {n: tools.info(n).server for n in tools.names() if tools.info(n).source == "mcp"}


async def test_the_first_configured_server_keeps_the_name_even_when_it_answers_last() -> None:
    tools = ServerTools(builtin_names=())
    first_gate = asyncio.Event()
    first, second = FakeConn(["echo", "only_a"], first_gate), FakeConn(["echo", "only_b"])
    add(tools, "sgood", first)
    add(tools, "other", second)

    async def release_first_after_second() -> None:
        await second.answered.wait()
        await asyncio.sleep(0.05)  # the second's listing is in hand well before the first's
        first_gate.set()

    releaser = asyncio.create_task(release_first_after_second())
    warnings = await tools.start()
    await releaser
    assert owners(tools) == {"echo": "sgood", "only_a": "sgood", "other_echo": "other", "only_b": "other"}
    assert tools.names() == ["echo", "only_a", "other_echo", "only_b"]  # config order, then listing order
    assert tools.info("other_echo").remote_name == "echo"
    assert any("other_echo" in w for w in warnings)


@pytest.mark.parametrize("seed", range(4))
async def test_naming_does_not_depend_on_answer_timing(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    tools = ServerTools(builtin_names=())
    for name in ("a", "b", "c"):
        gate = asyncio.Event()
        asyncio.get_running_loop().call_later(rnd.random() * 0.05, gate.set)
        add(tools, name, FakeConn(["echo", "x"], gate))
    await tools.start()
    assert owners(tools) == {"echo": "a", "x": "a", "b_echo": "b", "b_x": "b", "c_echo": "c", "c_x": "c"}


async def test_a_server_listed_late_does_not_take_a_name_already_given() -> None:
    tools = ServerTools(builtin_names=())
    early = FakeConn(["echo"], down=True)  # the first configured is down at start
    add(tools, "early", early)
    add(tools, "late", FakeConn(["echo"]))
    warnings = await tools.start()
    assert owners(tools) == {"echo": "late"}
    assert any("down" in w for w in warnings)

    early.down = False  # it comes back: `echo` keeps meaning what live sessions were told it means
    new = await tools.refresh()
    assert owners(tools) == {"echo": "late", "early_echo": "early"}
    assert any("early_echo" in w and "late" in w and "restart" in w for w in new)
    assert await tools.refresh() == []  # nothing left to list: no duplicate names

    # and the other way round: a later-configured server listed late takes nothing from an earlier one
    tools2 = ServerTools(builtin_names=())
    late = FakeConn(["echo"], down=True)
    add(tools2, "first", FakeConn(["echo"]))
    add(tools2, "second", late)
    await tools2.start()
    late.down = False
    await tools2.refresh()
    assert owners(tools2) == {"echo": "first", "second_echo": "second"}


async def test_concurrent_refreshes_list_a_server_once() -> None:
    tools = ServerTools(builtin_names=())
    gate = asyncio.Event()
    add(tools, "s", FakeConn(["echo"], gate))
    asyncio.get_running_loop().call_later(0.02, gate.set)
    await asyncio.gather(tools.refresh(), tools.refresh(), tools.start())
    assert owners(tools) == {"echo": "s"}


async def test_the_tools_offered_in_all_are_capped_in_config_order(caplog) -> None:
    tools = ServerTools(builtin_names=("current_time",), max_tools=10)
    tools.add_http("get_weather", "https://weather.example.com/v1/now")
    gate = asyncio.Event()
    add(tools, "small", FakeConn([f"s{i}" for i in range(5)], gate))  # answers last
    add(tools, "huge", FakeConn([f"t{i}" for i in range(5000)]))
    asyncio.get_running_loop().call_later(0.02, gate.set)
    with caplog.at_level(logging.WARNING, logger="moksori.tools.toolset"):
        warnings = await tools.start()
    assert tools.names() == ["current_time", "get_weather", "s0", "s1", "s2", "s3", "s4", "t0", "t1", "t2"]
    assert len(tools.specs()) == len(tools.engine_tools()) == 10
    over = [w for w in warnings if "not offered" in w]
    assert len(over) == 1  # one warning, counting and naming what was left out
    assert "4997" in over[0] and "huge/t3" in over[0] and "4977 more" in over[0]
    assert len(over[0]) < 1000
    assert len([r for r in caplog.records if "not offered" in r.getMessage()]) == 1
    out = await tools.run("t4", {})
    assert not out.ok  # not offered, not callable


async def test_the_default_cap_is_128() -> None:
    tools = ServerTools(builtin_names=("current_time",))
    add(tools, "huge", FakeConn([f"t{i}" for i in range(5000)]))
    await tools.start()
    assert len(tools.specs()) == 128
    assert tools.names()[0] == "current_time"


def test_too_many_http_tools_is_a_config_error() -> None:
    tools = ServerTools(builtin_names=("current_time",), max_tools=2)
    tools.add_http("a", "https://example.com/a")
    with pytest.raises(ConfigError, match="too many"):
        tools.add_http("b", "https://example.com/b")
