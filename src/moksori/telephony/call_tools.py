"""Call control on a phone call: the agent's `end_call` / `transfer_call` tools, and the same
controls asked from outside the conversation (`PhoneCall.hang_up`, `PhoneCall.transfer`).

A tool says something first (the goodbye, the transfer notice), waits until the caller has
heard it (the carrier's marks, else the speaker's clock), then uses the carrier's REST API
(`moksori.telephony.control`), or closes the media stream when no REST is configured. A tool
called by a speculative reply waits until that reply is public: if it is cancelled, so is the
tool, and the call goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol

from moksori import cancellation
from moksori.engine import events as E
from moksori.engine.session import Session
from moksori.engine.tools import Tool, ToolBox
from moksori.errors import MoksoriError
from moksori.providers.base import ToolSpec
from moksori.settings import Settings
from moksori.telephony.control import CallControl, call_control_for
from moksori.telephony.phrases import TRANSFER_NOTICE
from moksori.telephony.playout import CarrierPlayout

__all__ = ["CallTools", "CallToolsHost", "normalize_number", "tools_enabled"]

log = logging.getLogger("moksori.telephony")

_NUMBER_PUNCTUATION = re.compile(r"[\s().-]")


def normalize_number(number: Any) -> str:
    return _NUMBER_PUNCTUATION.sub("", number) if isinstance(number, str) else ""


def tools_enabled(settings: Settings) -> bool:
    """Call-control tools: on, off, or (auto) on unless the LLM is the packaged SmolLM2-135M,
    which is too weak to be trusted with a hang-up button (it picks tools at random)."""
    mode = settings.telephony.tools
    if mode == "auto":
        return not (settings.llm.provider == "llamacpp" and not settings.llm.model)
    return mode == "on"


class CallToolsHost(Protocol):
    """What the controls use of their call (`PhoneCall` is one)."""

    carrier: str
    settings: Settings
    session: Session | None
    playout: CarrierPlayout | None

    @property
    def call_id(self) -> str | None: ...

    def end(self, reason: str, code: int = ...) -> None: ...


class CallTools:
    def __init__(self, host: CallToolsHost) -> None:
        self._host = host
        self.progress = asyncio.Event()  # set on every mark ack / tool-call event
        self._published_calls: list[tuple[str, str]] = []  # (tool name, response id), public only

    def toolbox(self) -> ToolBox:
        settings = self._host.settings
        box = ToolBox()
        if not tools_enabled(settings):
            return box
        box.add(Tool(
            ToolSpec("end_call", "Hang up the phone call. Use it when the caller says goodbye or asks to end the call.",
                     {"type": "object", "properties": {}, "additionalProperties": False}),
            self._tool_end_call, say_first=settings.telephony.goodbye or None, final=True))
        numbers = [normalize_number(n) for n in settings.telephony.transfer_numbers if normalize_number(n)]
        if numbers:
            box.add(Tool(
                ToolSpec("transfer_call", "Transfer the caller to a person at one of these numbers: "
                         + ", ".join(numbers) + ".",
                         {"type": "object", "properties": {"number": {"type": "string", "enum": numbers,
                                                                       "description": "E.164 number"}},
                          "required": ["number"], "additionalProperties": False}),
                self._tool_transfer, say_first=TRANSFER_NOTICE, final=False))
        return box

    def published(self, name: str, response_id: str) -> None:
        """A public reply called tool `name` (`agent.tool_call`)."""
        self._published_calls.append((name, response_id))
        self.progress.set()

    # ------------------------------------------------------------------ the agent's tools

    async def _tool_end_call(self, args: dict[str, Any]) -> dict[str, Any]:
        host = self._host
        rid = await self._released("end_call")
        await self._wait_heard(rid, host.settings.telephony.goodbye)
        result: dict[str, Any] = {"ok": True}
        control = self._control()
        call_id = host.call_id
        if control is not None and call_id is not None:
            try:
                await control.hangup(call_id)
                result["hung_up_via"] = "rest"
            except MoksoriError as e:
                log.warning("%s hang-up via REST failed (%s): closing the stream instead", host.carrier, e)
                result["hung_up_via"] = "stream"
            finally:
                await control.aclose()
        else:
            result["hung_up_via"] = "stream"
        if host.session is not None:
            host.session.publish(E.CallHangup(t=host.session.clock.now(), by="agent", via=result["hung_up_via"]))
        host.end("agent_hung_up")
        return result

    async def _tool_transfer(self, args: dict[str, Any]) -> dict[str, Any]:
        host = self._host
        number = normalize_number(args.get("number"))
        allowed = {normalize_number(n) for n in host.settings.telephony.transfer_numbers}
        if number not in allowed:
            return {"error": f"cannot transfer to {number or 'that number'}: allowed are {', '.join(sorted(allowed))}"}
        rid = await self._released("transfer_call")
        control = self._control()
        call_id = host.call_id
        if control is None or call_id is None:
            return {"error": "transfers are not configured on this line"}
        await self._wait_heard(rid, TRANSFER_NOTICE)
        try:
            await control.transfer(call_id, number)
        except MoksoriError as e:
            log.warning("%s transfer failed: %s", host.carrier, e)
            return {"error": f"the transfer failed: {e}"[:300]}
        finally:
            await control.aclose()
        if host.session is not None:
            host.session.publish(E.CallTransferred(t=host.session.clock.now(), to=number))
        host.end("transferred")
        return {"ok": True, "transferred_to": number}

    # ------------------------------------------------------------------ from outside the conversation

    async def hang_up(self) -> str:
        """End the call now: through the carrier's REST API when it is configured, else by
        closing the media stream. Returns "rest" or "stream"."""
        host = self._host
        via = "stream"
        control = self._control()
        call_id = host.call_id
        if control is not None and call_id is not None:
            try:
                await control.hangup(call_id)
                via = "rest"
            except MoksoriError as e:
                log.warning("%s hang-up via REST failed (%s): closing the stream instead", host.carrier, e)
            finally:
                await control.aclose()
        host.end("hung_up_by_api")
        return via

    async def transfer(self, number: str) -> str:
        """Transfer the caller now to one of `telephony.transfer_numbers`. Raises PermissionError
        for another number, `MoksoriError` when the carrier's API fails or is not configured."""
        host = self._host
        number = normalize_number(number)
        allowed = {normalize_number(n) for n in host.settings.telephony.transfer_numbers}
        if number not in allowed:
            raise PermissionError(f"{number or 'that number'} is not one of MOKSORI_TELEPHONY_TRANSFER_NUMBERS")
        control = self._control()
        call_id = host.call_id
        if control is None or call_id is None:
            raise MoksoriError(f"transfers are not configured for {host.carrier} (no REST credentials)")
        try:
            await control.transfer(call_id, number)
        finally:
            await control.aclose()
        host.end("transferred")
        return number

    # ------------------------------------------------------------------ inside

    def _control(self) -> CallControl | None:
        host = self._host
        transfer_url = None
        if host.settings.public_url:
            transfer_url = host.settings.public_url.rstrip("/") + "/telephony/plivo/transfer"
        try:
            return call_control_for(host.carrier, host.settings, plivo_transfer_url=transfer_url)
        except MoksoriError as e:
            log.warning("%s call control is misconfigured: %s", host.carrier, e)
            return None

    async def _released(self, name: str) -> str:
        """Wait until the response that called `name` is public (not a speculation that may
        still be cancelled: then this task is cancelled with it). Returns its response id."""
        while True:
            for i, (n, rid) in enumerate(self._published_calls):
                if n == name:
                    del self._published_calls[i]
                    return rid
            self.progress.clear()
            await self.progress.wait()

    async def _wait_heard(self, rid: str, said: str | None, timeout_s: float = 10.0) -> None:
        """Wait until the caller has heard everything response `rid` said so far, including
        `said` (the words a tool says first): confirmed by marks, else by the speaker's clock."""
        session, playout = self._host.session, self._host.playout
        if session is None or playout is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        said = (said or "").strip()
        # 1. every sample of it has left the speaker (the clause reaches TTS just after the call)
        while loop.time() < deadline:
            pb = session.speaker.current
            if pb is not None and pb.response_id != rid:
                break  # another reply has the speaker: ours was cut off
            if pb is not None:
                has_said = not said or any(said in text for text, _ in pb.segments)
                if has_said and pb.sent >= pb.generated:
                    break
            await asyncio.sleep(0.02)
        # 2. the caller has heard it: the mark after its last sample came back
        target = playout.sent(rid)
        if not target:
            return
        backlog = max(0, target - playout.heard(rid)) / playout.rate
        deadline = min(deadline, loop.time() + backlog + 2.0)
        while playout.heard(rid) < target and loop.time() < deadline:
            if not playout.marks_in_flight(rid):  # no marks on this stream: trust the speaker's clock
                pb = session.speaker.current
                rest = pb.play_end - session.clock.now() if pb is not None and pb.response_id == rid else 0.0
                await asyncio.sleep(max(0.0, min(rest, deadline - loop.time())))
                return
            self.progress.clear()
            try:
                await cancellation.wait_for(self.progress.wait(), max(0.01, deadline - loop.time()))
            except TimeoutError:
                return
