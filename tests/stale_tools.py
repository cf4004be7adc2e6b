"""Helpers of the store's durability tests: a server process with the context-telling stand-in
LLM (`tests/stale_server.py`), and a Realtime session driven by the official `openai` client with
typed turns (`TypedClient`)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import openai
from servers import ServerProcess, free_port

HERE = Path(__file__).resolve().parent


def stale_server(env: dict[str, str], data_dir: Path, *, drain_s: float = 30.0) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, str(HERE / "stale_server.py"), str(port), str(drain_s)], port=port,
                         ready_path="/health", ready_timeout_s=90, cwd=data_dir.parent,
                         env={"MOKSORI_CONFIG": "", "MOKSORI_LANGUAGE": "en", "PYTHONUNBUFFERED": "1", **env,
                              "MOKSORI_SERVER_PORT": str(port), "MOKSORI_DATA_DIR": str(data_dir)})


class TypedClient:
    """The official openai Realtime client; every server event kept in order by a reader task."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, key: str, user: str) -> TypedClient:
        client = openai.AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
        conn = await client.realtime.connect(model="moksori", extra_query={"user": user}, max_retries=0).enter()
        c = cls(conn)
        await c.wait("session.created")
        return c

    async def _read(self) -> None:
        try:
            while True:
                self.events.append(json.loads(await self.conn.recv_bytes()))
        except Exception:  # noqa: BLE001 - closed
            self.closed = True

    async def wait(self, typ: str, pred=lambda e: True, timeout: float = 60.0, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[after:]:
                if e["type"] == typ and pred(e):
                    return e
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(f"no {typ}; got {[e['type'] for e in self.events][-20:]}")
            await asyncio.sleep(0.02)

    async def say(self, text: str) -> int:
        """A typed user turn and a reply asked for it; returns the event index to wait after."""
        mark = len(self.events)
        await self.conn.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
        await self.conn.response.create()
        return mark

    async def turn(self, text: str) -> tuple[str, dict[str, Any]]:
        """Say `text`, wait for the whole reply: (its text, the response)."""
        mark = await self.say(text)
        done = await self.wait("response.done", after=mark)
        return reply_text(done["response"]), done["response"]

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.conn.close()


def reply_text(response: dict[str, Any]) -> str:
    out = []
    for item in response.get("output", []):
        for part in item.get("content") or []:
            out.append(part.get("transcript") or part.get("text") or "")
    return " ".join(x for x in out if x)


def wait_for(check, what: str, timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)
