"""Local models that really call tools: the chat-template path of `LlamaCppLLM` with tool-calling
templates (Qwen2.5/Hermes `<tool_call>` and Llama 3.1 JSON), rendered with the packaged GGUF's
tokenizer, and a full tool round trip through the OpenAI-compatible provider against the
scripted LLM server (a stand-in for a smart model) with a real MCP tool behind it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from moksori.engine.tools import ToolBox
from moksori.providers.base import ChatRequest, Message, TextDelta, ToolCall, ToolCallEvent, ToolSpec
from moksori.providers.tool_calls import ToolCallScanner
from moksori.tools import MCPTarget, ServerTools
from scripted_llm_server import ScriptedLLM
from servers import ThreadedASGIServer

# The tool parts of Qwen2.5-Instruct's template (Hermes format), as published with the model.
QWEN25 = (
    "{%- if tools %}<|im_start|>system\n{{ messages[0]['content'] if messages[0]['role'] == 'system' else '' }}"
    "\n\n# Tools\n\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\nFor each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n{%- endif %}'
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\n<tool_call>\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}{{- '<|im_start|>user\n<tool_response>\n' }}{{- message.content }}"
    "{{- '\n</tool_response><|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

WEATHER = ToolSpec("get_weather", "Weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CALL = ToolCall("call_1", "get_weather", '{"city": "Seoul"}')
CONVO = (Message("system", "You are helpful."), Message("user", "Weather in Seoul?"),
         Message("assistant", "", tool_calls=(CALL,)),
         Message("tool", "sunny, 21 degrees", tool_call_id="call_1", name="get_weather"))


@pytest.fixture(scope="module")
def llm():
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.models import path_of

    try:
        model = path_of("smollm2-135m")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"packaged SmolLM2 not available: {e}")
    m = LlamaCppLLM(model, threads=1, context_tokens=2048)
    yield m


def with_template(llm, template: str):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm._formatter = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="")
    llm._template_has_tools = "tools" in template
    return llm


def test_qwen_template_renders_tools_calls_and_results(llm) -> None:
    prompt = with_template(llm, QWEN25).render(ChatRequest(messages=CONVO, tools=(WEATHER,)))
    assert '<tools>' in prompt and '{"type": "function", "function": {"name": "get_weather"' in prompt
    # the earlier call is shown as an object, exactly as the model should write one
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Seoul"}}\n</tool_call>' in prompt
    assert '\\"city\\"' not in prompt  # not a JSON string encoded twice
    assert "<tool_response>\nsunny, 21 degrees\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_template_without_tools_gets_them_in_the_system_prompt(llm) -> None:
    from moksori.providers.llm_llamacpp import _CHATML

    prompt = with_template(llm, _CHATML).render(ChatRequest(messages=CONVO, tools=(WEATHER,)))
    assert "You can call these tools:" in prompt and '"name": "get_weather"' in prompt
    assert "[tool result for get_weather]: sunny, 21 degrees" in prompt
    # its earlier call in the format the block asks for, which the scanner reads back as a call
    # (it was `get_weather({"city": "Seoul"})`: the model copied that, unparsed, into its speech)
    shown = '<tool_call>{"name": "get_weather", "arguments": {"city": "Seoul"}}</tool_call>'
    assert shown in prompt and "get_weather({" not in prompt
    scanner = ToolCallScanner(enabled=True)
    assert not scanner.feed(shown) and [e.call.arguments for e in scanner.finish()] == ['{"city": "Seoul"}']


@pytest.mark.parametrize("raw", [
    # Qwen2.5 / Hermes
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Seoul"}}\n</tool_call>',
    # Llama 3.1 (JSON with "parameters"), with and without the python tag
    '{"name": "get_weather", "parameters": {"city": "Seoul"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Seoul"}}',
    # Mistral
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Seoul"}}]',
])
def test_calls_as_these_models_write_them_are_parsed(raw) -> None:
    scanner = ToolCallScanner(enabled=True)
    out = [e for ch in raw for e in scanner.feed(ch)] + scanner.finish()
    calls = [e.call for e in out if isinstance(e, ToolCallEvent)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Seoul"})]
    text = "".join(e.text for e in out if isinstance(e, TextDelta))
    assert "tool_call" not in text and "get_weather" not in text


async def test_round_trip_through_a_tool_calling_server_with_a_real_mcp_tool() -> None:
    """The scripted server (a stand-in for a model that calls tools) asks for the first tool; the
    MCP server answers; the result goes back; the model speaks about it."""
    from moksori.providers.llm_openai import OpenAICompatLLM

    scripted = ScriptedLLM(token_delay_s=0.0)
    tools = ServerTools(builtin_names=[])
    tools.add_mcp(MCPTarget("weather", command=sys.executable,
                            args=(str(Path(__file__).parent / "mcp_test_server.py"), "stdio"),
                            env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")}), allowed_tools=["weather"])
    try:
        assert await tools.start() == []
        box = ToolBox(tools.engine_tools())
        with ThreadedASGIServer(scripted.app) as srv:
            llm = OpenAICompatLLM(base_url=f"{srv.url}/v1", model="scripted")
            messages = [Message("system", "Be brief."), Message("user", "What's the weather in Seoul?")]
            calls = [e.call async for e in llm.chat(ChatRequest(tuple(messages), tools=box.specs()))
                     if isinstance(e, ToolCallEvent)]
            assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Seoul"})]
            output = await box.run(calls[0].name, calls[0].arguments)
            assert output == "Seoul: sunny, 21 degrees"
            messages += [Message("assistant", "", tool_calls=tuple(calls)),
                         Message("tool", output, tool_call_id=calls[0].id, name=calls[0].name)]
            reply = "".join([e.text async for e in llm.chat(ChatRequest(tuple(messages), tools=box.specs()))
                             if isinstance(e, TextDelta)])
            assert reply == "The tool says: Seoul: sunny, 21 degrees."
            sent = scripted.requests[-1]["messages"]
            assert sent[-2]["tool_calls"][0]["function"]["name"] == "weather" and sent[-1]["role"] == "tool"
            await llm.close()
    finally:
        await tools.close()
