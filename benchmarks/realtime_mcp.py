"""What a Realtime client's MCP tool costs, with its baselines in the same run.

A `moksori serve` (pipeline brain; the LLM is the scripted OpenAI-compatible stand-in of
tests/scripted_llm_server.py, so the model's own time is the same small constant everywhere),
the `mcp` SDK's own server over Streamable HTTP on loopback (tests/mcp_test_server.py), and the
official `openai` SDK Realtime client. Text in, text out. Per run:

* `list_ms`: `session.update` with the `mcp` tool -> `mcp_list_tools.completed` (new session,
  so a new MCP connection each time);
* `reply_plain_ms`: `response.create` -> `response.done` for a reply without a tool (baseline);
* `reply_mcp_ms`: the same with one MCP call (`scripted:tool=weather`), i.e. two LLM passes and
  the call;
* `call_ms`: `response.mcp_call.in_progress` -> `.completed` as the client sees it, and
  `direct_call_ms`: the same tool called straight from this process with `MCPConnection` (the
  MCP round trip without Moksori in between).

    python benchmarks/realtime_mcp.py [--runs 10] [--json benchmarks/results/realtime_mcp.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _stats import pct

KEY = "sk-moksori-bench-mcp"
TOKEN = "bench-token"


class Conn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for ev in self.conn:
            self.events.append((time.perf_counter(), ev.model_dump()))

    async def wait(self, typ: str, start: int = 0, timeout: float = 60.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, e in self.events[start:]:
                if e["type"] == typ:
                    return t, e
            await asyncio.sleep(0.002)
        raise TimeoutError(f"no {typ}: {[e['type'] for _, e in self.events[-10:]]}")


async def run(port: int, mcp_url: str, runs: int) -> dict[str, list[float]]:
    from openai import AsyncOpenAI

    from moksori.tools.mcp_client import MCPConnection, MCPTarget

    out: dict[str, list[float]] = {k: [] for k in ("list_ms", "reply_plain_ms", "reply_mcp_ms", "call_ms",
                                                   "direct_call_ms")}
    client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    tool = {"type": "mcp", "server_label": "wx", "server_url": mcp_url, "require_approval": "never",
            "headers": {"Authorization": f"Bearer {TOKEN}"}, "allowed_tools": ["weather"]}
    direct = MCPConnection(MCPTarget("direct", url=mcp_url, headers={"Authorization": f"Bearer {TOKEN}"}))
    await direct.list_tools()
    for i in range(runs + 1):  # the first run warms up and is not counted
        async with client.realtime.connect(model="gpt-realtime") as raw:
            c = Conn(raw)
            await c.wait("session.created")
            n = len(c.events)
            t0 = time.perf_counter()
            await raw.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                              "instructions": "scripted:reply=Fine.",
                                              "audio": {"input": {"turn_detection": None}},
                                              "tools": [tool]})  # type: ignore[list-item]
            t1, _ = await c.wait("mcp_list_tools.completed", n)
            for kind, instructions in (("reply_plain_ms", "scripted:reply=Fine."),
                                       ("reply_mcp_ms", "scripted:tool=weather")):
                n = len(c.events)
                await raw.session.update(session={"type": "realtime", "instructions": instructions})
                await c.wait("session.updated", n)
                await raw.conversation.item.create(item={"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Weather in Seoul?"}]})
                await c.wait("conversation.item.done", n)
                n = len(c.events)
                t2 = time.perf_counter()
                await raw.response.create()
                t3, _ = await c.wait("response.done", n)
                if i:
                    out[kind].append(1000 * (t3 - t2))
                if kind == "reply_mcp_ms" and i:
                    a, _ = await c.wait("response.mcp_call.in_progress", n)
                    b, _ = await c.wait("response.mcp_call.completed", n)
                    out["call_ms"].append(1000 * (b - a))
            if i:
                out["list_ms"].append(1000 * (t1 - t0))
            c.task.cancel()
        d0 = time.perf_counter()
        res = await direct.call("weather", {"city": "Seoul"}, timeout_s=10)
        assert res.ok, res.text
        if i:
            out["direct_call_ms"].append(1000 * (time.perf_counter() - d0))
    await direct.close()
    await client.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from scripted_llm_server import ScriptedLLM
    from servers import ServerProcess, ThreadedASGIServer, free_port

    from moksori.providers.models import prepare_whisper

    here = Path(__file__).resolve().parents[1] / "tests"
    llm = ScriptedLLM()
    with tempfile.TemporaryDirectory() as tmp, ThreadedASGIServer(llm.app) as llm_srv:
        data = Path(tmp) / "data"
        data.mkdir()
        prepare_whisper(data)
        mport = free_port()
        env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "MCP_TEST_TOKEN": TOKEN}
        with ServerProcess([sys.executable, str(here / "mcp_test_server.py"), "http", str(mport)], port=mport,
                           ready_path="/health", env=env, ready_timeout_s=60) as mcp_srv:
            mcp_url = mcp_srv.url + "/mcp"
            port = free_port()
            argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
            senv = {"MOKSORI_DATA_DIR": str(data), "MOKSORI_API_KEYS": KEY, "MOKSORI_LLM_PROVIDER": "openai",
                    "MOKSORI_LLM_BASE_URL": llm_srv.url + "/v1", "MOKSORI_LLM_MODEL": "scripted",
                    "MOKSORI_TOOLS_REALTIME_MCP_ALLOW": mcp_url, "MOKSORI_SERVER_SHED_LOOP_LAG_MS": "5000"}
            with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, env=senv, cwd=tmp):
                samples = asyncio.run(run(port, mcp_url, args.runs))
    summary = {k: {"p50": round(pct(v, 0.5), 1), "p95": round(pct(v, 0.95), 1), "n": len(v)}
               for k, v in samples.items()}
    report = {"benchmark": "realtime_mcp", "cpu": platform.processor() or platform.machine(),
              "load_avg": os.getloadavg(), "runs": args.runs, "summary": summary}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
