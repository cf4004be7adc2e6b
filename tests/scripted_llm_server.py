"""A deterministic OpenAI-compatible chat server on loopback, for protocol tests.

The packaged SmolLM2-135M is too small to call tools reliably, and its answers vary in length.
Protocol tests that need a function call, or a reply of a known length (barge-in, cancel), start
`moksori serve` with `MOKSORI_LLM_PROVIDER=openai MOKSORI_LLM_BASE_URL=<this server>/v1`.

What it answers (`POST /v1/chat/completions`, streamed as SSE):

* the request offers tools and the last message is the user's -> a call of the first tool, with
  arguments built from its schema (`{"city": "Seoul"}` for a `city` string); the server's own
  built-in `current_time` (offered in every session) is called only when named, as below;
* the last message is a tool result -> "The tool says: <result>." (then LONG_REPLY when the system
  prompt contains `scripted:after_tool=long`);
* the system prompt contains `scripted:preface=TEXT` (to the end of its line) -> TEXT is said
  before a tool call, in the same answer (as a model says "Let me check." and calls the tool);
* the system prompt contains `scripted:long` -> LONG_REPLY (about 15 s of speech);
* the system prompt contains `scripted:tool=NAME` -> that tool is the one called (not the first);
* the system prompt contains `scripted:reply=TEXT` (to the end of its line) -> TEXT, when no tool
  is called;
* otherwise SHORT_REPLY.

Streamed unless the request says `"stream": false` (then one `chat.completion` object).

Every request is recorded in `ScriptedLLM.requests`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

SHORT_REPLY = "Sure, that sounds good."
LONG_REPLY = ("Let me tell you a rather long story about the sea. Long ago, a small boat left the harbour "
              "at dawn with three sailors and a dog. They sailed past the lighthouse, past the islands, "
              "and far beyond the last rocks, where the water turns deep blue and very quiet. "
              "For many days they saw nothing but waves, clouds and the occasional seabird.")
MODEL = "scripted"
SERVER_BUILTINS = ("current_time",)  # moksori's built-in tools: the tests' own tools come first


def _sample_arguments(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = params.get("properties") or {}
    for name, schema in props.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if name == "city":
            out[name] = "Seoul"
        elif kind == "integer":
            out[name] = 1
        elif kind == "number":
            out[name] = 1.5
        elif kind == "boolean":
            out[name] = True
        else:
            out[name] = "test"
    return out


class ScriptedLLM:
    def __init__(self, *, token_delay_s: float = 0.01) -> None:
        self.token_delay_s = token_delay_s
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ])

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]})

    def decide(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """(reply text, tool call or None) for one request."""
        messages = body.get("messages") or []
        system = " ".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
        last = messages[-1] if messages else {}
        tools = body.get("tools") or []
        wanted = re.search(r"scripted:tool=([A-Za-z0-9_-]+)", system)
        if wanted:
            tools = [t for t in tools if t.get("function", {}).get("name") == wanted.group(1)]
        else:
            tools = [t for t in tools if t.get("function", {}).get("name") not in SERVER_BUILTINS]
        if tools and last.get("role") == "user" and body.get("tool_choice") != "none":
            fn = tools[0].get("function", {})
            args = _sample_arguments(fn.get("parameters") or {})
            preface = re.search(r"scripted:preface=([^\n]+)", system)
            return preface.group(1).strip() if preface else "", {"name": fn.get("name", "tool"),
                                                                  "arguments": json.dumps(args)}
        if last.get("role") == "tool":
            said = f"The tool says: {last.get('content') or 'nothing'}."
            return f"{said} {LONG_REPLY}" if "scripted:after_tool=long" in system else said, None
        if "scripted:long" in system:
            return LONG_REPLY, None
        fixed = re.search(r"scripted:reply=([^\n]+)", system)
        if fixed:
            return fixed.group(1).strip(), None
        return SHORT_REPLY, None

    async def chat(self, request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        self.requests.append(body)
        text, call = self.decide(body)
        rid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        usage = {"prompt_tokens": 10 * len(body.get("messages") or []), "completion_tokens": len(text.split()) + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream") is False:  # one whole answer
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call is not None:
                message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                          "function": {"name": call["name"], "arguments": call["arguments"]}}]
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": MODEL,
                                 "choices": [{"index": 0, "message": message,
                                              "finish_reason": "tool_calls" if call else "stop"}],
                                 "usage": usage})

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": MODEL,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(obj)}\n\n"

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            if call is not None:
                if text:  # words before the call (`scripted:preface=`)
                    yield chunk({"content": text})
                yield chunk({"tool_calls": [{"index": 0, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                             "function": {"name": call["name"], "arguments": ""}}]})
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": call["arguments"]}}]})
                yield chunk({}, "tool_calls")
            else:
                words = text.split(" ")
                for i, w in enumerate(words):
                    yield chunk({"content": w if i == 0 else " " + w})
                    await asyncio.sleep(self.token_delay_s)
                yield chunk({}, "stop")
            yield f"data: {json.dumps({'id': rid, 'object': 'chat.completion.chunk', 'created': created, 'model': MODEL, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/scripted_llm_server.py 8091
    import sys

    import uvicorn

    uvicorn.run(ScriptedLLM().app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8091)
