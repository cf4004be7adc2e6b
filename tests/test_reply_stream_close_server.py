"""A real server's replies ended mid-clause leave no stream for the garbage collector.

`moksori serve` (`tests/serve_collecting.py`: collecting garbage every 0.2 s, as a busy server's
collector eventually does) with `tests/scripted_llm_server.py` as its OpenAI-compatible LLM on
loopback, and the official `openai` SDK as clients: concurrent sessions whose long replies are
cancelled (`response.cancel`) or whose clients leave, as the first clause is being spoken.
Before, each such reply's LLM stream was left to the collector, which set off one `aclose()` per
async generator of its nest: 4 per reply failed with "aclose(): asynchronous generator is already
running" and were logged as "Task exception was never retrieved" (tests/test_reply_stream_close.py
has the mechanism in virtual time).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from scripted_llm_server import ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir
from test_realtime_clients import KEY, manual_session

pytestmark = [pytest.mark.models]

ROUNDS = 2  # of 4 concurrent sessions: cancelled, or left, at first audio or 50 ms after it


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted_llm):
    data_dir = prepared_data_dir(tmp_path_factory)
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("serve_collecting.py")), "serve",
            "--host", "127.0.0.1", "--port", str(port)]
    env = {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": KEY, "PYTHONUNBUFFERED": "1",
           "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": scripted_llm.url,
           "MOKSORI_LLM_MODEL": "scripted",
           # a shared test machine lags: no shedding of these sessions (load shedding is not under test)
           "MOKSORI_SERVER_SHED_LOOP_LAG_MS": "5000"}
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, env=env,
                       cwd=tmp_path_factory.mktemp("serve-collecting")) as srv:
        assert srv.wait_for_log("serve_collecting: a full collection every", timeout_s=10)
        yield srv


async def _reply_ended_mid_clause(port: int, how: str, after_s: float) -> str:
    """A long reply, ended `after_s` after its first audio: cancelled, or its client leaves.
    Returns the reply's final status as the client saw it ("gone" when it left)."""
    conn, log = await manual_session(port, instructions="scripted:long")
    try:
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Tell me a story."}]})
        await conn.response.create()
        await log.wait("response.output_audio.delta", timeout=30)
        await asyncio.sleep(after_s)
        if how == "leave":
            return "gone"
        await conn.response.cancel()
        return (await log.wait("response.done", timeout=15))["response"]["status"]
    finally:
        await log.close()
        await conn.close()


async def test_replies_cancelled_or_left_mid_clause_leave_no_unretrieved_task_error(server):
    for _ in range(ROUNDS):
        ended = await asyncio.gather(*(_reply_ended_mid_clause(server.port, how, after_s)
                                       for how in ("cancel", "leave")
                                       for after_s in (0.0, 0.05)))
        assert ended == ["cancelled", "cancelled", "gone", "gone"]
    await asyncio.sleep(1.0)  # five full collections
    log = server.log_text()
    assert log.count("Task exception was never retrieved") == 0, log[-2000:]
    assert "asynchronous generator is already running" not in log
