"""A reply's words before a tool item: their audio goes out under their own message item.

A reply that says some words, calls a tool the client is shown (an MCP tool: its `mcp_call` item
goes out inside the response) and speaks again has two assistant message items. The tool call is
parsed as soon as the LLM has written it, while the words before it are still being synthesised
and paced out: their audio (and their transcript) must still go out under the first message item,
that item's `response.output_audio.done`, `output_audio_transcript.done`, `content_part.done` and
`output_item.done` after its last audio, then the tool item, then the second message item with
the follow-up's audio. The tool itself runs meanwhile (it is not held back by the audio): only the
wire order waits. Checked:

* (with and without output guardrails, which show the words clause by clause as each is checked,
  so the transcript of the words before the tool may still be coming when the tool item does)
  the order of the response's events, each audio delta's item id (one run of the first item's,
  then one of the second's), each item's audio transcribed back by the server's own Whisper
  (`/v1/audio/transcriptions`): the first item's audio says the words before the tool, the
  second's the follow-up, none of either lost or said twice;
* the first item truncated while its audio is still going out and the tool item not yet shown:
  `conversation.item.truncated` once, before the item's end (it was still in progress), the reply
  stops there (no audio after it), the tool item and what followed are shown after the first item
  is done, the first item keeps what was heard.

Real components: `moksori serve` (pipeline brain, Piper for the reply audio, Whisper for the
transcriptions), the `mcp` SDK's own server (tests/mcp_test_server.py) over Streamable HTTP on
loopback, the official `openai` SDK's Realtime client (every event validated against its union)
and audio client. The packaged SmolLM2 cannot call tools, so the LLM is the scripted
OpenAI-compatible stand-in on loopback (tests/scripted_llm_server.py, not a model): it says a
preface, calls the tool in the same answer, then says "The tool says: <result>." (and, when
asked, a long story after it).
"""

from __future__ import annotations

import base64
import difflib
import io
import re
import wave
from typing import Any

import pytest
from test_realtime_clients import KEY, EventLog, moksori_serve
from test_realtime_mcp import mcp_url, scripted  # noqa: F401 - the module's fixtures
from test_realtime_truncate import transcript, truncate
from test_realtime_truncate_tools import PREFACE, SAID, TOOL, ask, in_session, served  # noqa: F401

from speech import prepared_data_dir, requires_speech

RATE = 24000


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, scripted, mcp_url):  # noqa: F811
    """The same server with output guardrails on (a block term no reply says)."""
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-guarded"),
                       MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=scripted.url, MOKSORI_LLM_MODEL="scripted",
                       MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="", MOKSORI_TOOLS_REALTIME_MCP_ALLOW=mcp_url,
                       MOKSORI_GUARDRAILS_BLOCK_TERMS_EN="banana") as srv:
        yield srv


def events_of(log: EventLog, rid: str) -> list[dict[str, Any]]:
    """The events from the response's `response.created` to its `response.done`."""
    start = next(i for i, e in enumerate(log.events)
                 if e["type"] == "response.created" and e["response"]["id"] == rid)
    end = next(i for i, e in enumerate(log.events)
               if i > start and e["type"] == "response.done" and e["response"]["id"] == rid)
    return log.events[start:end + 1]


def item_of(e: dict[str, Any]) -> str | None:
    return e.get("item_id") or (e.get("item") or {}).get("id")


def wire(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(type, item id) of each event, runs of deltas of one kind and item shown once."""
    out: list[tuple[str, str | None]] = []
    for e in events:
        key = (e["type"], item_of(e))
        if not (out and out[-1] == key and e["type"].endswith(".delta")):
            out.append(key)
    return out


async def truncated_midway(conn: Any, log: EventLog) -> tuple[Any, str, dict[str, Any]]:
    """Ask about the weather, truncate the reply's first message item at 500 ms while its audio
    still goes out (before the tool item is shown), and check the reply stopped there: (the
    reply, its first item's id, its `response.done`)."""
    reply = await ask(conn, log, "What is the weather in Seoul?")
    first = await reply.until(0.8, index=0, timeout=20)
    n = len(log.events)
    assert not [e for e in log.events if e["type"] == "response.output_item.added"
                and e.get("response_id") == reply.rid and e["item"]["type"] == "mcp_call"], \
        "the tool item was shown while the words before it were still going out"
    answer = await truncate(conn, log, first, 500)
    done = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, start=n, timeout=15)
    assert answer["type"] == "conversation.item.truncated" and answer["audio_end_ms"] == 500, answer
    assert done["response"]["status"] == "cancelled", done["response"]
    cuts = [e for e in log.of("conversation.item.truncated") if e["item_id"] == first]
    assert [e["audio_end_ms"] for e in cuts] == [500]
    after = log.events.index(cuts[0])
    assert not [e for e in log.events[after:] if e["type"] == "response.output_audio.delta"
                and e["response_id"] == reply.rid]
    return reply, first, done


def pcm(events: list[dict[str, Any]], item_id: str) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events
                    if e["type"] == "response.output_audio.delta" and e["item_id"] == item_id)


async def heard_words(port: int, audio: bytes) -> list[str]:
    """What the server's own Whisper hears in 24 kHz PCM16 (the official client)."""
    from openai import AsyncOpenAI

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(audio)
    api = AsyncOpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    try:
        tr = await api.audio.transcriptions.create(model="whisper-1", file=("item.wav", buf.getvalue()),
                                                   language="en")
    finally:
        await api.close()
    return re.findall(r"[a-z0-9]+", tr.text.lower())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def close_to(heard: list[str], said: list[str]) -> bool:
    """Whisper heard the words said, all and once (a word misheard at most: a lost or repeated
    phrase is far from it)."""
    return difflib.SequenceMatcher(a=heard, b=said).ratio() >= 0.85


def first_item_before_the_tool(events: list[dict[str, Any]], first: str, second: str) -> None:
    """The first message item's audio, then its ends, then the tool item, then the second item."""
    seq = wire(events)
    at = {key: i for i, key in reversed(list(enumerate(seq)))}  # first place of each (type, item)
    last = {key: i for i, key in enumerate(seq)}  # last place
    audio_items: list[str | None] = []  # the audio deltas' items, each run once
    for e in events:
        if e["type"] == "response.output_audio.delta" and (not audio_items or audio_items[-1] != e["item_id"]):
            audio_items.append(e["item_id"])
    assert audio_items == [first, second], f"audio deltas' items in order: {audio_items}; events: {seq}"
    call = next(item for typ, item in seq if typ == "response.output_item.added" and item not in (first, second))
    ends = [at[("response.output_audio.done", first)], at[("response.output_audio_transcript.done", first)],
            at[("response.content_part.done", first)], at[("response.output_item.done", first)]]
    assert last[("response.output_audio.delta", first)] < ends[0] and ends == sorted(ends), seq
    assert ends[-1] < at[("response.output_item.added", call)] < at[("response.output_item.added", second)], seq
    assert last[("response.output_audio_transcript.delta", first)] < ends[0], seq
    assert not any(item == first for typ, item in seq[ends[-1] + 1:] if typ != "conversation.item.done"), seq
    assert not any(item == second for _, item in seq[:at[("response.output_item.added", second)]]), seq


@pytest.mark.models
@requires_speech
@pytest.mark.parametrize("server", ["served", "guarded"])
def test_the_words_before_the_tool_item_keep_their_audio(request, server, scripted, mcp_url) -> None:  # noqa: F811
    served = request.getfixturevalue(server)  # noqa: F811

    async def body(conn: Any, log: EventLog) -> None:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        done = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
        assert done["response"]["status"] == "completed", done["response"]
        events = events_of(log, reply.rid)
        first, second = reply.messages()
        first_item_before_the_tool(events, first, second)
        out = done["response"]["output"]
        assert [(o["type"], o["id"]) for o in out] == [("message", first), ("mcp_call", out[1]["id"]),
                                                       ("message", second)], out
        assert out[1]["output"] == "Seoul: sunny, 21 degrees"
        assert out[0]["content"][0]["transcript"] == PREFACE and out[2]["content"][0]["transcript"] == SAID
        said = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
                       and e["item_id"] == first)
        assert said == PREFACE
        # each item's audio says its own words, all of them, once
        one, two = pcm(events, first), pcm(events, second)
        assert len(one) / 2 / RATE > 1.0 and len(two) / 2 / RATE > 1.0, (len(one), len(two))
        heard_one = await heard_words(served.port, one)
        assert close_to(heard_one, words(PREFACE)), heard_one
        # none said twice; all said is `close_to`'s, which lets Whisper mishear one word: Piper's
        # audio differs run to run, and "weather" is heard as "water" about once in 25 syntheses
        assert heard_one.count("check") <= 1 and heard_one.count("weather") <= 1, heard_one
        heard_two = await heard_words(served.port, two)
        assert heard_two[:3] == ["the", "tool", "says"] and heard_two.count("tool") == 1, heard_two
        assert "sunny" in heard_two and "degrees" in heard_two, heard_two
        assert not {"check", "weather"} & set(heard_two), heard_two
        assert await transcript(conn, log, first) == PREFACE and await transcript(conn, log, second) == SAID

    in_session(served, mcp_url, TOOL, body)


@pytest.mark.models
@requires_speech
def test_the_first_item_truncated_while_its_audio_still_goes_out(served, scripted, mcp_url) -> None:  # noqa: F811
    async def body(conn: Any, log: EventLog) -> None:
        reply, first, done = await truncated_midway(conn, log)
        events = events_of(log, reply.rid)
        seq = wire(events)
        first_done = seq.index(("response.output_item.done", first))
        assert seq.index(("conversation.item.truncated", first)) < first_done, seq  # (it was still in progress)
        assert all(item != first or typ == "conversation.item.done" for typ, item in seq[first_done + 1:]), seq
        tools = [i for i, (typ, item) in enumerate(seq) if typ == "response.output_item.added" and item != first]
        assert all(i > first_done for i in tools), seq
        heard = await transcript(conn, log, first)
        assert heard != PREFACE and PREFACE.split()[:len(heard.split())] == heard.split(), heard
        out = done["response"]["output"]
        assert out[0]["id"] == first and out[0]["content"][0]["transcript"] == heard, out
        assert out[0]["status"] == "incomplete", out[0]
        assert all(o["content"][0]["transcript"] == "" for o in out[1:] if o["type"] == "message"), out

    in_session(served, mcp_url, f"{TOOL}\nscripted:after_tool=long", body)
