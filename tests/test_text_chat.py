"""`moksori chat --text` driven through stdin, as a person at a terminal would (a real process).

Against the real packaged model, and against a scripted OpenAI-compatible server on loopback
(`scripted_llm_server.py`, named as such: it records every request, so we can see exactly what
reached the model) that can also play a rate-limited or failing server and Azure OpenAI.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scripted_llm_server import LONG_REPLY, SHORT_REPLY, ScriptedLLM
from servers import ThreadedASGIServer

TOKENS_LINE = re.compile(r"^\[Tokens used: (~?\d+) \| Estimated cost: \$(\d+\.\d+)\]$", re.M)
TOTAL_LINE = re.compile(r"\[Session total: Tokens used: (\d+) \| Estimated cost: \$(\d+\.\d+)\]$", re.M)


class FaultyLLM:
    """The scripted server behind a fault switch, on `/v1` and on Azure's deployment paths."""

    def __init__(self, *, token_delay_s: float = 0.0) -> None:
        self.llm = ScriptedLLM(token_delay_s=token_delay_s)
        self.faults: list[tuple[int, dict[str, str]]] = []  # consumed one per chat request
        self.seen: list[dict] = []  # path, query, headers of every chat request
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/openai/deployments/{dep}/chat/completions", self.chat, methods=["POST"]),
        ])

    async def chat(self, request: Request) -> Response:
        self.seen.append({"path": request.url.path, "query": dict(request.query_params),
                          "headers": {k.lower(): v for k, v in request.headers.items()}})
        if self.faults:
            status, headers = self.faults.pop(0)
            body = {"error": {"message": "Rate limit reached for requests" if status == 429 else "upstream exploded",
                              "type": "rate_limit_error" if status == 429 else "server_error"}}
            return JSONResponse(body, status, headers=headers)
        return await self.llm.chat(request)


@pytest.fixture
def scripted():
    f = FaultyLLM()
    with ThreadedASGIServer(f.app) as srv:
        f.url = srv.url
        yield f


def chat(args: list[str], stdin: str, env: dict[str, str], *, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moksori", "chat", "--text", *args], input=stdin,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout)


def remote_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {"MOKSORI_DATA_DIR": str(tmp_path), "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": url + "/v1",
            "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LLM_MAX_RETRIES": "2", **extra}


def user_messages(f: FaultyLLM) -> list[str]:
    return [m["content"] for req in f.llm.requests for m in req["messages"] if m["role"] == "user"]


def test_commands_never_reach_the_model_and_tokens_and_cost_are_shown(scripted, tmp_path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[models.scripted]\ninput_per_1m = 1000.0\noutput_per_1m = 2000.0\n', encoding="utf-8")
    env = remote_env(tmp_path, scripted.url, MOKSORI_PRICES_FILE=str(prices))
    r = chat(["--user", "mina"], "Hello there\ntokens\ncost\n/history\nHow are you?\nclear\nhistory\nexit\n", env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = r.stdout
    # two model calls, for the two real messages; the commands stayed in the terminal
    assert len(scripted.llm.requests) == 2
    sent = " ".join(user_messages(scripted))
    for word in ("tokens", "cost", "history", "clear", "exit"):
        assert word not in sent
    assert out.count(SHORT_REPLY) >= 2
    lines = TOKENS_LINE.findall(out)
    # the scripted server reports 10 prompt tokens per message and words + 1 completion tokens
    assert [int(n) for n, _ in lines] == [2 * 10 + 5, 4 * 10 + 5]
    assert [float(c) for _, c in lines] == pytest.approx([(20 * 1000 + 5 * 2000) / 1e6, (40 * 1000 + 5 * 2000) / 1e6])
    assert "Session tokens: 25 (input 20" in out and "Session cost: $0.0300 estimated" in out
    assert "you: Hello there" in out and f"agent: {SHORT_REPLY}" in out  # the history command
    assert "(a fresh conversation" in out and "(no messages yet)" in out
    total = TOTAL_LINE.search(out)
    assert total and int(total.group(1)) == 70 and float(total.group(2)) == pytest.approx(0.08)
    # the reply cap of the text chat is 800 tokens (voice keeps its short replies)
    assert {req["max_tokens"] for req in scripted.llm.requests} == {800}
    assert all(req["stream"] is True for req in scripted.llm.requests)


def test_history_persists_across_runs_per_user(scripted, tmp_path) -> None:
    env = remote_env(tmp_path, scripted.url)
    r1 = chat(["--user", "jun"], "My cat is called Nabi.\nquit\n", env)
    assert r1.returncode == 0, r1.stderr
    r2 = chat(["--user", "jun", "--no-stream"], "What is my cat called?\n", env)  # end of input quits too
    assert r2.returncode == 0, r2.stderr
    assert "resumed 2 earlier messages of jun" in r2.stderr
    last = scripted.llm.requests[-1]
    assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "user"]
    assert last["messages"][1]["content"] == "My cat is called Nabi." and last["stream"] is False
    assert TOKENS_LINE.search(r2.stdout) and TOTAL_LINE.search(r2.stdout)
    # another user, and no user at all, start empty
    chat(["--user", "other"], "Hi\n", env)
    chat([], "Hi\n", env)
    for req in scripted.llm.requests[-2:]:
        assert [m["role"] for m in req["messages"]] == ["system", "user"]


def test_pii_is_masked_in_the_stored_history(scripted, tmp_path) -> None:
    """What the text chat stores is masked (`guardrails.redact_pii`): the next run's history holds
    `[PHONE]`, not the number, while the model saw the number in the run where it was typed."""
    env = remote_env(tmp_path, scripted.url)
    r1 = chat(["--user", "pii"], "Call me on 010-2345-6789 tomorrow.\n", env)
    assert r1.returncode == 0, r1.stderr
    assert "010-2345-6789" in user_messages(scripted)[-1]
    r2 = chat(["--user", "pii"], "Do you have my number?\n", env)
    assert r2.returncode == 0, r2.stderr
    first = scripted.llm.requests[-1]["messages"][1]["content"]
    assert first == "Call me on [PHONE] tomorrow."


def test_rate_limited_then_recovers_after_backoff(scripted, tmp_path) -> None:
    scripted.faults = [(429, {"Retry-After": "1"})]
    t = time.monotonic()
    r = chat([], "Hello\n", remote_env(tmp_path, scripted.url))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert SHORT_REPLY in r.stdout and time.monotonic() - t >= 1.0  # Retry-After honoured
    assert "retrying" in r.stderr or len(scripted.seen) == 2


@pytest.mark.parametrize("status", [429, 500])
def test_a_server_that_keeps_failing_gives_a_clear_message_and_the_chat_goes_on(scripted, tmp_path, status) -> None:
    scripted.faults = [(status, {})] * 3  # every attempt fails (1 try + 2 retries)
    r = chat([], "Hello\nStill there?\n", remote_env(tmp_path, scripted.url))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    assert ("rate-limiting" if status == 429 else "HTTP 500") in err[0]
    assert len(scripted.seen) == 4  # 3 attempts for the first message, 1 for the second
    # the unanswered message left the context (the store still has it): the next one goes alone
    assert user_messages(scripted) == ["Still there?"]
    assert SHORT_REPLY in r.stdout and TOTAL_LINE.search(r.stdout)


def test_azure_openai_deployment_api_version_and_key_file(scripted, tmp_path) -> None:
    key = tmp_path / "azure.key"
    key.write_text("az-secret-123\n", encoding="utf-8")
    env = remote_env(tmp_path, scripted.url, MOKSORI_LLM_API_FLAVOR="azure", MOKSORI_LLM_BASE_URL=scripted.url,
                     MOKSORI_LLM_DEPLOYMENT="gpt-4o-mini-prod", MOKSORI_LLM_API_VERSION="2024-10-21",
                     MOKSORI_LLM_API_KEY_FILE=str(key))
    env.pop("MOKSORI_LLM_MODEL")
    r = chat([], "Hello Azure\n", env)
    assert r.returncode == 0, r.stderr
    seen = scripted.seen[-1]
    assert seen["path"] == "/openai/deployments/gpt-4o-mini-prod/chat/completions"
    assert seen["query"] == {"api-version": "2024-10-21"} and seen["headers"]["api-key"] == "az-secret-123"
    assert SHORT_REPLY in r.stdout and "az-secret-123" not in r.stdout + r.stderr


def test_ctrl_c_stops_a_reply_not_the_chat(tmp_path) -> None:
    slow = FaultyLLM(token_delay_s=0.2)
    with ThreadedASGIServer(slow.app) as srv:
        env = {**os.environ, **remote_env(tmp_path, srv.url, MOKSORI_AGENT_INSTRUCTIONS="scripted:long")}
        p = subprocess.Popen([sys.executable, "-m", "moksori", "chat", "--text"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            p.stdin.write("Tell me a story\n")
            p.stdin.flush()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not slow.llm.requests:
                time.sleep(0.05)
            time.sleep(1.5)  # a few words in
            p.send_signal(signal.SIGINT)
            time.sleep(0.5)
            p.stdin.write("Hello\nquit\n")
            p.stdin.flush()
            out, err = p.communicate(timeout=60)
        finally:
            p.kill()
    assert p.returncode == 0, err
    assert "[interrupted]" in out and "Traceback" not in err
    assert len(slow.llm.requests) == 2
    heard = [m["content"] for m in slow.llm.requests[1]["messages"] if m["role"] == "assistant"]
    assert len(heard) == 1 and 0 < len(heard[0]) < len(LONG_REPLY) and LONG_REPLY.startswith(heard[0])
    assert TOTAL_LINE.search(out)


@pytest.mark.models
@pytest.mark.slow
def test_with_the_real_packaged_model(tmp_path) -> None:
    env = {"MOKSORI_DATA_DIR": str(tmp_path), "MOKSORI_LLM_TEMPERATURE": "0"}
    r = chat(["--user", "kim"], "Hello, who are you?\ntokens\nquit\n", env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = TOKENS_LINE.findall(r.stdout)
    assert len(lines) == 1 and int(lines[0][0]) > 10 and lines[0][1] == "0.00"  # local models are free
    assert re.search(r"Session tokens: \d+ \(input \d+", r.stdout) and TOTAL_LINE.search(r.stdout)
    r2 = chat(["--user", "kim"], "history\n", env, timeout=300)
    assert "resumed 2 earlier messages of kim" in r2.stderr and "you: Hello, who are you?" in r2.stdout

    async def stored() -> list[str]:
        from moksori.store import DEFAULT_TENANT, Store

        store = await Store(f"sqlite:///{tmp_path / 'moksori.db'}", hash_secret=b"x").start()
        h = await store.load_history(DEFAULT_TENANT, "kim", max_tokens=10_000)
        await store.close()
        return [f"{i.role}:{i.text}" for i in h.items]

    items = asyncio.run(stored())
    assert items[0] == "user:Hello, who are you?" and len(items) == 2 and items[1].startswith("assistant:")
    json.dumps(items)


def test_azure_urls() -> None:
    from moksori.providers.llm_openai import azure_url, is_azure_host

    assert azure_url("https://r.openai.azure.com", "dep", "2024-10-21") == \
        "https://r.openai.azure.com/openai/deployments/dep?api-version=2024-10-21"
    assert azure_url("https://r.openai.azure.com/openai/", "dep", None) == "https://r.openai.azure.com/openai/deployments/dep"
    kept = "https://r.openai.azure.com/openai/deployments/x?api-version=2025-01-01"
    assert azure_url(kept, "dep", "2024-10-21") == kept  # a URL that names its deployment and version wins
    assert azure_url("https://r.openai.azure.com/openai/v1", "dep", None) == "https://r.openai.azure.com/openai/v1"
    assert is_azure_host("r.openai.azure.com") and is_azure_host("r.cognitiveservices.azure.com")
    assert not is_azure_host("azure.com.evil.example")


# --------------------------------------------------------------------------- the agent kit (issue 12)


class WeatherBackend:
    """An HTTP tool on loopback: the weather, and a broken lookup."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.app = Starlette(routes=[Route("/weather", self.weather, methods=["POST"]),
                                     Route("/broken", self.broken, methods=["POST"])])

    async def weather(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append(body)
        return JSONResponse({"city": body.get("city"), "forecast": "sunny", "celsius": 21})

    async def broken(self, request: Request) -> Response:
        return JSONResponse({"error": {"message": "backend database is down"}}, status_code=503)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "moksori.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_server_tools_from_the_toml_config_are_called(scripted, tmp_path) -> None:
    """The `[[tools.http]]` and `[[tools.mcp]]` (stdio, the `mcp` SDK's own server) of the
    config are offered and run; the result goes back to the model; a failing tool gets the
    apology; calls and results are in the stored history."""
    backend = WeatherBackend()
    mcp_server = Path(__file__).parent / "mcp_test_server.py"
    config = write_config(tmp_path, f"""
[tools]
builtins = []

[[tools.http]]
name = "get_weather"
description = "Current weather for a city"
url = "{{URL}}/weather"
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }} }}, required = ["city"] }}

[[tools.http]]
name = "lookup"
description = "A lookup that is down"
url = "{{URL}}/broken"

[[tools.mcp]]
name = "wx"
command = "{sys.executable}"
args = ["{mcp_server}", "stdio"]
allowed_tools = ["weather"]
""")
    with ThreadedASGIServer(backend.app) as srv:
        config.write_text(config.read_text(encoding="utf-8").replace("{URL}", srv.url), encoding="utf-8")
        env = remote_env(tmp_path, scripted.url, MOKSORI_CONFIG=str(config),
                         MOKSORI_AGENT_INSTRUCTIONS="scripted:tool=get_weather")
        r = chat(["--user", "tom"], "What is the weather in Seoul?\nhistory\n", env)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert backend.calls == [{"city": "Seoul"}]
        assert "(tool: get_weather)" in r.stderr
        assert 'The tool says: {"city":"Seoul","forecast":"sunny","celsius":21}.' in r.stdout
        first, second = scripted.llm.requests[-2:]
        assert sorted(t["function"]["name"] for t in first["tools"]) == ["get_weather", "lookup", "weather"]
        assert second["messages"][-1]["role"] == "tool" and "sunny" in second["messages"][-1]["content"]
        assert "(tool call) get_weather(" in r.stdout  # the history command
        assert len(TOKENS_LINE.findall(r.stdout)) == 1  # one reply, both rounds counted in it

        # the MCP server's tool, then the broken HTTP tool: the apology, no second model pass
        env["MOKSORI_AGENT_INSTRUCTIONS"] = "scripted:tool=weather"
        r = chat(["--user", "tom"], "And with the other service?\nhistory\n", env)
        assert r.returncode == 0, r.stderr
        assert "The tool says: Seoul: sunny, 21 degrees." in r.stdout
        assert '(tool call) wx: weather({"city": "Seoul"})' in r.stdout  # one mcp_call item, with its server
        env["MOKSORI_AGENT_INSTRUCTIONS"] = "scripted:tool=lookup"
        n = len(scripted.llm.requests)
        r = chat(["--user", "tom"], "Look it up.\n", env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "Sorry, I couldn't get that information right now." in r.stdout
        assert len(scripted.llm.requests) == n + 1

    async def stored() -> list[Any]:
        from moksori.store import DEFAULT_TENANT, Store

        store = await Store(f"sqlite:///{tmp_path / 'moksori.db'}", hash_secret=b"x").start()
        h = await store.load_history(DEFAULT_TENANT, "tom", max_tokens=100_000)
        await store.close()
        return list(h.items)

    items = asyncio.run(stored())
    kinds = [i.type for i in items]
    # the HTTP tools' calls as function_call + output; the `[[tools.mcp]]` server's as one mcp_call item
    assert kinds.count("function_call") == 2 and kinds.count("function_call_output") == 2
    mcp = [i for i in items if i.type == "mcp_call"]
    assert len(mcp) == 1 and mcp[0].server_label == "wx" and mcp[0].name == "weather"
    assert mcp[0].output == "Seoul: sunny, 21 degrees" and json.loads(mcp[0].arguments or "") == {"city": "Seoul"}


def test_input_and_output_guardrails_and_the_safe_sentence(scripted, tmp_path) -> None:
    """A typed turn blocked by the term list, one blocked by the moderation endpoint (a loopback
    stand-in of `/v1/moderations`, named as such), and a reply with a blocked clause: the model
    never sees the blocked turns (not even in later turns' history), the blocked clause and what
    follows are never printed, and the store keeps neither."""
    from test_guardrails import ModerationStandIn

    from moksori.engine.memory import BLOCKED_TEXT

    moderation = ModerationStandIn()
    with ThreadedASGIServer(moderation.app) as mod:
        env = remote_env(tmp_path, scripted.url, MOKSORI_GUARDRAILS_BLOCK_TERMS_EN="banana",
                         MOKSORI_GUARDRAILS_SAFE_REPLY_EN="Let us talk about something else.",
                         MOKSORI_GUARDRAILS_MODERATION_URL=f"{mod.url}/v1",
                         MOKSORI_AGENT_INSTRUCTIONS="scripted:reply=Hello there. The secret code is banana split. "
                                                    "Have a nice day.")
        n = len(scripted.llm.requests)
        r = chat(["--user", "gil"], "Tell me about banana bread.\nHow do I attack the castle?\nHi!\nhistory\n", env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert len(scripted.llm.requests) == n + 1  # only the third turn reached the model
    sent = " ".join(user_messages(scripted)[-3:])
    assert "banana" not in sent and "attack" not in sent and BLOCKED_TEXT in sent and "Hi!" in sent
    assert r.stdout.count("agent: Let us talk about something else.") == 2 * 2  # the replies, then `history`
    assert r.stdout.count(f"you: {BLOCKED_TEXT}") == 2
    assert "agent: Hello there. Let us talk about something else." in r.stdout
    assert "banana split" not in r.stdout and "Have a nice day" not in r.stdout
    assert "(guardrail: input block, terms:" in r.stderr and "(guardrail: input block, moderation:" in r.stderr
    assert "(guardrail: output block, terms:" in r.stderr
    assert "banana" not in r.stderr

    async def stored() -> list[str]:
        from moksori.store import DEFAULT_TENANT, Store

        store = await Store(f"sqlite:///{tmp_path / 'moksori.db'}", hash_secret=b"x").start()
        h = await store.load_history(DEFAULT_TENANT, "gil", max_tokens=100_000)
        await store.close()
        return [i.text for i in h.items]

    texts = asyncio.run(stored())
    assert texts[0] == BLOCKED_TEXT and texts[2] == BLOCKED_TEXT
    assert not any("banana" in t or "attack" in t for t in texts), texts
