"""Requests from one worker to another, with an answer and a timeout (call control).

Each worker listens on its own channel (`rpc:<worker id>`) and on its reply channel
(`rpc-reply:<worker id>`), both through the shared pub/sub connection (`hub.py`):

    request  {"id", "method", "params", "reply_to"}          -> rpc:<target>
    answer   {"id", "ok": true, "result": {...}}              -> rpc-reply:<caller>
             {"id", "ok": false, "error": {"code", "message"}}

`PUBLISH` says how many listeners got the request: 0 means the target is not there (it died,
or its pub/sub connection is down), and the caller knows at once instead of waiting for the
timeout. A handler that raises `RpcError` answers with its code; any other exception answers
`internal_error` (logged here, never sent in full).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from moksori import cancellation
from moksori.cluster.hub import RESYNC, PubSubHub, Subscription
from moksori.cluster.redis_client import Keys, RedisUnavailable, translated
from moksori.errors import MoksoriError

log = logging.getLogger("moksori.cluster")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST_BYTES = 64 * 1024


class RpcError(MoksoriError):
    """A forwarded request failed. `code`: worker_unreachable | worker_timeout | unknown_method |
    invalid_request | internal_error, or whatever the handler raised (e.g. call_not_found)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Rpc:
    def __init__(self, redis: Any, keys: Keys, hub: PubSubHub, *, worker_id: str, timeout_s: float = 5.0) -> None:
        self.redis, self.keys, self.hub = redis, keys, hub
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self.handlers: dict[str, Handler] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Subscription] = []
        self.handled = 0

    def handle(self, method: str, fn: Handler) -> None:
        self.handlers[method] = fn

    async def start(self) -> None:
        """Listen on this worker's channels (from now on, or as soon as Redis is reachable)."""
        requests = await self.hub.subscribe(self.keys.rpc(self.worker_id), wait=False)
        replies = await self.hub.subscribe(self.keys.rpc_reply(self.worker_id), wait=False)
        self._subs = [requests, replies]
        self._spawn(self._serve(requests), "cluster-rpc-serve")
        self._spawn(self._answers(replies), "cluster-rpc-answers")

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self._subs:
            await s.close()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RpcError("worker_unreachable", "this worker is shutting down"))

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ caller

    async def call(self, worker_id: str, method: str, params: dict[str, Any], *,
                   timeout_s: float | None = None) -> dict[str, Any]:
        """Run `method` on `worker_id` and return its result. Raises `RpcError`, or
        `RedisUnavailable` when the request cannot be sent."""
        if worker_id == self.worker_id:
            return await self._run_local(method, params)
        rid = secrets.token_hex(8)
        request = json.dumps({"id": rid, "method": method, "params": params,
                              "reply_to": self.keys.rpc_reply(self.worker_id)}, separators=(",", ":"))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            async with translated("call control"):
                receivers = await self.redis.publish(self.keys.rpc(worker_id), request)
            if not receivers:
                raise RpcError("worker_unreachable", f"worker {worker_id} is not listening (it has stopped, "
                                                     "or lost its connection to Redis)")
            timeout = self.timeout_s if timeout_s is None else timeout_s
            try:
                answer = await cancellation.wait_for(fut, timeout)
            except TimeoutError:
                raise RpcError("worker_timeout", f"worker {worker_id} did not answer {method} in {timeout:g} s") \
                    from None
        finally:
            self._waiting.pop(rid, None)
        if answer.get("ok"):
            return answer.get("result") or {}
        err = answer.get("error") or {}
        raise RpcError(str(err.get("code") or "internal_error"), str(err.get("message") or "the request failed"))

    async def _answers(self, sub: Subscription) -> None:
        while True:
            item = await sub.get()
            if item is None and sub.closed:
                return
            if item is None or item is RESYNC:
                continue
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                answer = json.loads(item)
                fut = self._waiting.get(answer.get("id"))
                if fut is not None and not fut.done():
                    fut.set_result(answer)

    # ------------------------------------------------------------------ serving

    async def _serve(self, sub: Subscription) -> None:
        while True:
            item = await sub.get()
            if item is None and sub.closed:
                return
            if item is None or item is RESYNC:
                continue
            self._spawn(self._one(item), "cluster-rpc-request")

    async def _run_local(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        fn = self.handlers.get(method)
        if fn is None:
            raise RpcError("unknown_method", f"no handler for {method!r}")
        return await fn(params)

    async def _one(self, raw: str) -> None:
        if len(raw) > MAX_REQUEST_BYTES:
            return
        try:
            req = json.loads(raw)
            rid, method, params, reply_to = req["id"], req["method"], req.get("params") or {}, req["reply_to"]
            if not (isinstance(method, str) and isinstance(params, dict) and isinstance(reply_to, str)
                    and reply_to.startswith(self.keys.prefix)):
                raise ValueError("malformed request")
        except (TypeError, ValueError, KeyError):
            log.info("call control: dropped a malformed request")
            return
        try:
            answer: dict[str, Any] = {"id": rid, "ok": True, "result": await self._run_local(method, params)}
        except RpcError as e:
            answer = {"id": rid, "ok": False, "error": {"code": e.code, "message": e.message}}
        except Exception:
            log.exception("call control: %s failed", method)
            answer = {"id": rid, "ok": False, "error": {"code": "internal_error", "message": f"{method} failed"}}
        self.handled += 1
        with contextlib.suppress(RedisUnavailable):
            async with translated("call control"):
                await self.redis.publish(reply_to, json.dumps(answer, separators=(",", ":")))
