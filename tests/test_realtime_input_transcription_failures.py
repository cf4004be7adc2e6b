"""Audio the server cannot transcribe, outside the conversation's own items, driven by the
official `openai` SDK (GA and beta) against a real `moksori serve`:

* `response.create` with its own `input` (out-of-band input items) holding audio: when the STT
  fails (the server's STT is a remote URL where nothing listens any more: a real refused
  connection), the response fails cleanly, `response.created` then `response.done` with status
  `failed` and `status_details.error.code` `input_audio_transcription_failed` (the STT's own error
  in its message), no `error` event and no reply made from nothing (the LLM is never asked);
  so does one naming, by `item_reference`, an item whose audio could not be transcribed;
* that audio is transcribed off the connection's handler: the client's next events are handled
  while it is (before the fix a `conversation.item.create` sent right after waited for the whole
  transcription), and a `response.cancel` meanwhile ends the response at once, never started.

The LLM is `tests/scripted_llm_server.py` (it records what it was asked). Speech:
/work/shared/speech/en/en_028.wav ("i have a thousand thoughts about that thing").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types import realtime as ga_types
from openai.types.beta import realtime as beta_types
from realtime_speech import b64, speech_pcm
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from speech import requires_speech
import test_realtime_clients
import test_realtime_item_parts
from test_realtime_clients import BETA_ADAPTER, GA_ADAPTER, KEY, EventLog

pytestmark = [pytest.mark.models, requires_speech]

data_dir, scripted_llm = test_realtime_clients.data_dir, test_realtime_clients.scripted_llm  # (module fixtures)
server, deaf_server = test_realtime_item_parts.server, test_realtime_item_parts.deaf_server  # (a deaf one: its STT refused)

UNHEARD = "input_audio_transcription_failed"


@contextlib.asynccontextmanager
async def session(port: int, *, beta: bool = False) -> AsyncIterator[tuple[Any, EventLog]]:
    """A session without turn detection, transcribing its items."""
    client = openai.AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    realtime = client.beta.realtime if beta else client.realtime
    conn = await realtime.connect(model="gpt-realtime").enter()
    log = EventLog(conn.recv_bytes, adapter=BETA_ADAPTER if beta else GA_ADAPTER, parse=conn.parse_event)
    try:
        await log.wait("session.created")
        heard = {"model": "whisper-1", "language": "en"}
        await conn.session.update(session={"input_audio_transcription": heard, "turn_detection": None} if beta else {
            "type": "realtime", "audio": {"input": {"transcription": heard, "turn_detection": None}}})
        await log.wait("session.updated")
        yield conn, log
    finally:
        await log.close()
        await conn.close()


def spoken_input(*, text: str | None = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "input_text", "text": text}] if text else []
    content.append({"type": "input_audio", "audio": b64(speech_pcm(pad_s=0.5))})
    return [{"type": "message", "role": "user", "content": content}]


def user_words(llm: ScriptedLLM, asked: int) -> list[str]:
    request, = llm.requests[asked:]
    return [m.get("content") or "" for m in request["messages"] if m["role"] == "user"]


def assert_failed_unheard(log: EventLog, metadata: dict[str, str], *, beta: bool = False) -> dict[str, Any]:
    """The one response of the log: created, then failed for its unheard input, nothing in between."""
    created, = log.of("response.created")
    done, = log.of("response.done")
    r = done["response"]
    assert created["response"]["id"] == r["id"] and created["response"]["status"] == "in_progress", created
    assert r["status"] == "failed" and r["output"] == [] and r["metadata"] == metadata, r
    error = r["status_details"]["error"]
    assert r["status_details"]["type"] == "failed" and error["code"] == UNHEARD, r
    assert error["type"] == "server_error" and "could not be transcribed" in error["message"], error
    # as the SDK reads it
    model = (beta_types.ResponseDoneEvent if beta else ga_types.ResponseDoneEvent).model_validate(done)
    assert model.response.status == "failed" and model.response.status_details is not None
    assert model.response.status_details.error is not None and model.response.status_details.error.code == UNHEARD
    between = log.types()[log.events.index(created) + 1:log.events.index(done)]
    assert between == [], between  # no output item, no text, no audio
    assert not log.of("error")
    return error


# --------------------------------------------------------------------------- the STT fails


async def test_a_response_whose_input_audio_cannot_be_transcribed_fails(deaf_server, scripted_llm):
    asked = len(scripted_llm.requests)
    async with session(deaf_server.port) as (conn, log):
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "metadata": {"ask": "summary"},
                                             "input": spoken_input(text="Summarize what I said.")})
        await log.wait("response.done", timeout=90)
        error = assert_failed_unheard(log, {"ask": "summary"})
        assert "response.input[0]" in error["message"], error
        assert not any(t.startswith("conversation.item.") for t in log.types())  # not a conversation item

        # the connection goes on: a response it can hear is answered
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"], "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Are you there?"}]}]})
        ok = await log.wait("response.done", lambda e: e["response"]["status"] != "failed", timeout=60)
        assert ok["response"]["status"] == "completed", ok
        log.check_ids()
    # the LLM was asked once: for the second response, never for the one it could not hear
    assert user_words(scripted_llm, asked) == ["Are you there?"]

    async with session(deaf_server.port, beta=True) as (conn, log):
        await conn.response.create(response={"conversation": "none", "modalities": ["text"],
                                             "metadata": {"ask": "beta"}, "input": spoken_input()})
        await log.wait("response.done", timeout=90)
        assert_failed_unheard(log, {"ask": "beta"}, beta=True)
        log.check_ids()
    assert len(scripted_llm.requests) == asked + 1


async def test_a_response_naming_an_item_whose_audio_went_unheard_fails(deaf_server, scripted_llm):
    async with session(deaf_server.port) as (conn, log):
        await conn.conversation.item.create(item={"type": "message", "id": "item_unheard", "role": "user",
                                                  "content": spoken_input()[0]["content"]})
        # named while its words are still coming: the response prepares until they fail
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "metadata": {"ask": "named"},
                                             "input": [{"type": "item_reference", "id": "item_unheard"}]})
        await log.wait("conversation.item.input_audio_transcription.failed", timeout=90)
        await log.wait("response.done", timeout=30)
        n = len(log.events)
        error = assert_failed_unheard(log, {"ask": "named"})
        assert "item_unheard" in error["message"], error

        # named once its failure is known: the same, at once
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "input": [{"type": "item_reference", "id": "item_unheard"}]})
        again = await log.wait("response.done", start=n, timeout=30)
        assert again["response"]["status"] == "failed", again
        assert again["response"]["status_details"]["error"]["code"] == UNHEARD
        assert not log.of("error")
        log.check_ids()


# --------------------------------------------------------------------------- off the handler


async def test_the_next_events_are_handled_while_a_response_input_is_transcribed(server, scripted_llm):
    async with session(server.port) as (conn, log):
        asked = len(scripted_llm.requests)
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "input": spoken_input(text="Answer this.")})
        await conn.conversation.item.create(item={"type": "message", "id": "item_meanwhile", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Meanwhile."}]})
        done = await log.wait("response.done", timeout=90)
        assert done["response"]["status"] == "completed", done
        added = log.types().index("conversation.item.added")
        assert log.events[added]["item"]["id"] == "item_meanwhile"
        # the item was handled while the response's audio was being transcribed: before it started
        assert added < log.types().index("response.created"), log.types()
        words, = user_words(scripted_llm, asked)
        assert words.startswith("Answer this. ") and "thousand" in words.lower(), words
        assert "".join(e["delta"] for e in log.of("response.output_text.delta")) == SHORT_REPLY
        assert not log.of("error")
        log.check_ids()


async def test_a_cancel_while_a_response_input_is_transcribed_ends_it_unstarted(server, scripted_llm):
    async with session(server.port) as (conn, log):
        asked = len(scripted_llm.requests)
        await conn.response.create(response={"output_modalities": ["text"], "metadata": {"ask": "cancelled"},
                                             "input": spoken_input()})
        await conn.response.cancel()
        done = await log.wait("response.done", timeout=30)
        r = done["response"]
        assert r["status"] == "cancelled" and r["status_details"] == {"type": "cancelled",
                                                                       "reason": "client_cancelled"}, r
        assert r["metadata"] == {"ask": "cancelled"} and r["output"] == [], r
        assert log.of("response.created")[0]["response"]["id"] == r["id"]
        await asyncio.sleep(3.0)  # (the transcription's time: nothing of the response follows)
        assert log.types().count("response.created") == 1 and len(scripted_llm.requests) == asked
        # the conversation is free again
        await conn.response.create(response={"output_modalities": ["text"]})
        ok = await log.wait("response.done", lambda e: e["response"]["id"] != r["id"], timeout=60)
        assert ok["response"]["status"] == "completed", ok
        assert not log.of("error")
        log.check_ids()
