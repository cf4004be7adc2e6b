"""A user's history follows them across the workers of `make cluster`.

`scripts/cluster.py up` (what `make cluster` runs) starts nginx and 2 real `moksori serve` workers
(the embedded speech models) on PostgreSQL and Redis; their LLM is `tests/scripted_llm_server.py`
on loopback, given as CLUSTER_LLM_URL (an OpenAI-compatible server that already runs): the named
stand-in for a smart model, which records every request, so the test reads what the agent was
sent. The official `openai` Realtime client connects through nginx:

1. with `?user=U` (a user id of this run only), it speaks a turn of real recorded speech
   (`../shared/speech/en/en_028.wav`) and gets the reply; the registry (`GET /v1/cluster`) tells
   which worker held the session; the session closes;
2. that worker is drained and restarted (`scripts/cluster.py restart`, what `make
   cluster-restart` runs: SIGTERM, then the same worker again);
3. while it is away, U connects again through nginx and lands on the other worker; the first
   request that session sends the LLM holds the first session's turn (the user's words, then the
   reply), before the new turn;
4. `GET /v1/conversations?user=U` on each worker (straight to its port) lists both conversations;
   `DELETE /v1/users/U` erases them (and the database and the Redis prefix go with the fixture).

Then `kill -9` of the worker holding another user's live session, once its turn is stored: the
user reconnects through nginx, lands on the surviving worker, and its prompt holds that turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from typing import Any

import httpx
import pytest
from cluster_tools import REPO, running_cluster, start_time
from realtime_speech import Client, speech_pcm, user_messages
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ThreadedASGIServer
from speech import requires_speech

pytestmark = [pytest.mark.slow, pytest.mark.models, requires_speech]

KEY = "sk-cluster-history-1"


@pytest.fixture(scope="module")
def llm():
    scripted = ScriptedLLM()
    with ThreadedASGIServer(scripted.app) as srv:
        scripted.url = srv.url
        yield scripted


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, llm):
    with running_cluster(tmp_path_factory, KEY, {
            "CLUSTER_LLM_URL": llm.url, "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_LANGUAGE": "en",
            "MOKSORI_CONFIG": "", "MOKSORI_CLUSTER_HEARTBEAT_S": "1", "MOKSORI_CLUSTER_TTL_S": "3",
            "MOKSORI_SERVER_DRAIN_TIMEOUT_S": "30"}) as c:
        c["llm"] = llm
        yield c


def call(method: str, url: str, path: str) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def sessions(cluster: dict[str, Any]) -> dict[int, int]:
    """pid -> sessions, as the registry (through nginx) shows them."""
    r = call("GET", cluster["url"], "/v1/cluster")
    assert r.status_code == 200, r.text
    return {w["pid"]: w["sessions"] for w in r.json()["workers"]}


def one_session(counts: dict[int, int]) -> dict[int, int] | None:
    """The counts, if exactly one worker holds one session (and the other none)."""
    return counts if sorted(counts.values()) == [0, 1] else None


async def until(check, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.2)


def worker_url(state: dict[str, Any], i: int) -> str:
    return f"http://127.0.0.1:{state['worker_ports'][i]}"


async def spoken_turn(c: Client, utterance: str) -> tuple[list[str], dict[str, Any]]:
    """Speak `utterance`; (the final transcripts, the completed response)."""
    await c.setup()
    feeder = asyncio.create_task(c.speak(speech_pcm(utterance)))
    try:
        # (a pause may split the speech: a reply to its first part can be cut by the rest)
        done = await c.wait("response.done", lambda e: e["response"]["status"] == "completed", timeout=120)
        await c.wait("conversation.item.input_audio_transcription.completed", timeout=10)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    said = [e["transcript"] for e in c.events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    return said, done["response"]


async def test_a_users_history_follows_them_to_the_other_worker(cluster):
    user = f"clusterhist-{secrets.token_hex(6)}"
    st, llm = cluster["state"], cluster["llm"]
    pids = [w["pid"] for w in st["workers"]]
    restart = None
    try:
        # 1. a spoken turn through nginx, on whichever worker nginx picks
        c = await Client.open(cluster["port"], KEY, user=user)
        try:
            said, first = await spoken_turn(c, "en_028")
            held = await until(lambda: one_session(sessions(cluster)), "the session in the registry")
        finally:
            await c.close()
        assert any("thousand" in s.lower() for s in said), said
        i = next(k for k, pid in enumerate(pids) if held.get(pid) == 1)
        drained, other = st["workers"][i], st["workers"][1 - i]
        await until(lambda: set(sessions(cluster).values()) == {0}, "the session closed")

        # 2. the worker that held it drains and restarts (`make cluster-restart WORKER=n`)
        restart = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "scripts/cluster.py"), "restart", cwd=REPO,
            env={**cluster["env"], "WORKER": str(i + 1)}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        await until(lambda: start_time(drained["pid"]) != drained["start"], "the drained worker exiting", 60)

        # 3. while it is away (its successor loads its models), the user comes back through nginx
        before = len(llm.requests)
        c = await Client.open(cluster["port"], KEY, user=user)
        try:
            _, second = await spoken_turn(c, "en_021")
            assert sessions(cluster).get(other["pid"]) == 1  # the other worker holds it
        finally:
            await c.close()
        assert len(llm.requests) > before
        sent = user_messages(llm.requests[before])
        assert sent[:2] == [("user", said[0]), ("assistant", SHORT_REPLY)], sent  # the first session's turn
        assert sent[-1][0] == "user" and sent[-1][1] != said[0], sent  # then the new turn
        assert second["conversation_id"] != first["conversation_id"]

        out, _ = await asyncio.wait_for(restart.communicate(), 400)
        assert restart.returncode == 0, out.decode(errors="replace")
        fresh = json.loads((cluster["dir"] / "state.json").read_text())
        st.clear()
        st.update(fresh)  # cluster-down sees the restarted worker
        log = (cluster["dir"] / f"worker-{i + 1}.log").read_text(errors="replace")
        assert "were not written before shutdown" not in log and "Traceback" not in log, log[-3000:]

        # 4. either worker lists both conversations of the user
        both = {first["conversation_id"], second["conversation_id"]}
        for k in range(2):
            await until(lambda k=k: {c["id"] for c in call("GET", worker_url(st, k),
                                                            f"/v1/conversations?user={user}").json()["data"]} == both,
                        f"both conversations listed on worker-{k + 1}")
    finally:
        if restart is not None and restart.returncode is None:
            restart.kill()
            await restart.wait()
        erased = call("DELETE", cluster["url"], f"/v1/users/{user}")
    assert erased.status_code == 200, erased.text
    assert call("GET", cluster["url"], f"/v1/conversations?user={user}").status_code == 404


async def test_after_kill_9_the_user_continues_on_the_surviving_worker(cluster):
    user = f"clusterhist-{secrets.token_hex(6)}"
    st, llm = cluster["state"], cluster["llm"]
    pids = [w["pid"] for w in st["workers"]]
    try:
        c = await Client.open(cluster["port"], KEY, user=user)
        try:
            said, first = await spoken_turn(c, "en_028")
            held = await until(lambda: one_session(sessions(cluster)), "the session in the registry")
            i = next(k for k, pid in enumerate(pids) if held.get(pid) == 1)
            survivor = worker_url(st, 1 - i)
            conv = first["conversation_id"]
            # the turn is in the database (read on the other worker), then its worker dies mid-session;
            # the reply is stored whole once its audio has played out (before that, the part heard)
            await until(lambda: SHORT_REPLY in json.dumps(call("GET", survivor, f"/v1/conversations/{conv}/items").json()),
                        "the first turn stored")
            os.kill(pids[i], signal.SIGKILL)
            await until(lambda: c.closed, "the client cut off")
        finally:
            await c.close()

        before = len(llm.requests)
        c = await Client.open(cluster["port"], KEY, user=user)
        try:
            _, second = await spoken_turn(c, "en_021")
            assert sessions(cluster).get(pids[1 - i]) == 1
        finally:
            await c.close()
        sent = user_messages(llm.requests[before])
        assert sent[:2] == [("user", said[0]), ("assistant", SHORT_REPLY)], sent
        assert sent[-1][0] == "user" and sent[-1][1] != said[0], sent
        listed = call("GET", survivor, f"/v1/conversations?user={user}").json()["data"]
        assert {x["id"] for x in listed} == {conv, second["conversation_id"]}
    finally:
        erased = call("DELETE", cluster["url"], f"/v1/users/{user}")
    assert erased.status_code == 200, erased.text
