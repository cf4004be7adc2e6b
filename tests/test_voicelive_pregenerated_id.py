"""The id of Azure Voice Live's `pre_generated_assistant_message` is the reply's item id.

`AssistantMessageItem` has an optional `id` (azure-ai-voicelive's models): a client that names
its message finds the reply under that id (`response.output_item.added`, the conversation's
item, `conversation.item.retrieve`, `conversation.item.truncate`); an id already in the
conversation is refused (`item_exists`) and no response starts.

* The engine's half, alone (virtual time, the package's scripted fakes): a reply asked for with
  `item_id` keeps it, in its events and in memory.
* End to end with the `azure-ai-voicelive` SDK against a real `moksori serve` (its LLM the
  scripted stand-in of test_voicelive_pregenerated.py, never asked): needs the codec to carry the
  message's id (`ResponseOverrides.fixed_item_id`, protocols/realtime/client_events.py) and
  `realtime_config.response_overrides` to pass it on as `item_id`; skipped until it does.
"""

from __future__ import annotations

import asyncio

import pytest
from test_voicelive_pregenerated import TEXT, scripted_llm, server  # noqa: F401 - the module's fixtures

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.protocols.realtime import ResponseOverrides
from moksori.testing.fakes import fake_stack
from moksori.testing.virtual_time import run_virtual

NAMED = "msg_client_parcel_1"


def test_a_reply_asked_for_with_an_item_id_keeps_it() -> None:
    async def main() -> tuple[list[E.Event], list[tuple[str, str, str]]]:
        s = Session(fake_stack(), SessionConfig(output_rate=16000, partial_interval_ms=0))
        seen: list[E.Event] = []
        s.bus.listen(seen.append)
        resp = s.create_response(fixed_text=TEXT, item_id=NAMED)
        await asyncio.wait_for(resp.done.wait(), 30)
        await s.close()
        return seen, [(i.id, i.role, i.text) for i in s.memory.items]

    seen, items = run_virtual(main())
    assert items == [(NAMED, "assistant", TEXT)]
    started = next(e for e in seen if isinstance(e, E.AgentResponseStarted))
    done = next(e for e in seen if isinstance(e, E.AgentResponseDone))
    assert started.item_id == done.item_id == NAMED


@pytest.mark.models
@pytest.mark.skipif("fixed_item_id" not in ResponseOverrides.__dataclass_fields__,
                    reason="the Realtime codec does not carry the pre-generated message's id yet")
async def test_the_named_pre_generated_message_is_the_reply_item(server, scripted_llm):  # noqa: F811
    from azure.ai.voicelive.aio import connect
    from azure.ai.voicelive.models import (AssistantMessageItem, Modality, OutputTextContentPart, RequestSession,
                                           ResponseCreateParams)
    from azure.core.credentials import AzureKeyCredential
    from test_realtime_clients import KEY, EventLog

    def named(item_id: str) -> ResponseCreateParams:
        return ResponseCreateParams(pre_generated_assistant_message=AssistantMessageItem(
            id=item_id, content=[OutputTextContentPart(text=TEXT)]))

    async with connect(endpoint=f"http://127.0.0.1:{server.port}", credential=AzureKeyCredential(KEY),
                       model="gpt-realtime") as conn:
        log = EventLog(conn.recv)
        try:
            await log.wait("session.created")
            await conn.session.update(session=RequestSession(modalities=[Modality.TEXT, Modality.AUDIO],
                                                             turn_detection=None))
            await log.wait("session.updated")
            asked = len(scripted_llm.requests)
            await conn.response.create(response=named(NAMED))
            done = await log.wait("response.done", timeout=60)
            assert done["response"]["status"] == "completed", done
            assert [i["id"] for i in done["response"]["output"]] == [NAMED]
            added = [e["item"]["id"] for e in log.of("response.output_item.added")]
            created = [e["item"]["id"] for e in log.of("conversation.item.created") if e["item"]["role"] == "assistant"]
            assert added == [NAMED] and created == [NAMED], (added, created)
            assert len(scripted_llm.requests) == asked
            await conn.conversation.item.retrieve(item_id=NAMED)
            got = await log.wait("conversation.item.retrieved")
            assert got["item"]["id"] == NAMED and got["item"]["content"][0]["transcript"] == TEXT
            await conn.conversation.item.truncate(item_id=NAMED, content_index=0, audio_end_ms=600)
            cut = await log.wait("conversation.item.truncated")
            assert cut["item_id"] == NAMED and cut["audio_end_ms"] == 600
            # the same id again: refused, and no response starts
            n = len(log.events)
            await conn.response.create(response=named(NAMED))
            err = await log.wait("error", start=n, timeout=10)
            assert err["error"]["code"] == "item_exists", err
            await asyncio.sleep(0.5)
            assert not [e for e in log.events[n:] if e["type"] == "response.created"]
        finally:
            await log.close()
