"""Server -> client events as JSON-able dicts, in the connection's dialect.

One :class:`ServerEvents` per connection. Every event gets ``event_id`` = ``<prefix><n>``
from the id source (``itertools.count(1)`` by default, so ids are unique per connection and
deterministic in tests) and a ``type``. A method returns ``None`` when the event does not
exist in the dialect (e.g. ``conversation.item.done`` in beta/Azure); no id is used then.

Warnings (settings accepted but not honoured): Azure has a real ``warning`` event; the
OpenAI dialects have none, so :meth:`ServerEvents.warning` sends an ``error`` event with
``type="invalid_request_error"`` and ``code="unsupported_feature"`` there. It does not
close the session; OpenAI clients surface it like any other error.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from moksori.errors import ProtocolError

from .flavor import Flavor, event_name

__all__ = ["ServerEvents"]

Event = dict[str, Any]


class ServerEvents:
    def __init__(self, flavor: Flavor, ids: Iterator[int] | None = None, *, prefix: str = "event_") -> None:
        self.flavor = flavor
        self._ids = ids if ids is not None else itertools.count(1)
        self._prefix = prefix

    def _ev(self, ga_type: str, **fields: Any) -> Event | None:
        name = event_name(ga_type, self.flavor)
        return None if name is None else self._named(name, **fields)

    def _named(self, name: str, **fields: Any) -> Event:
        return {"event_id": f"{self._prefix}{next(self._ids)}", "type": name, **fields}

    def _every(self, ga_type: str, **fields: Any) -> Event:
        """An event that every dialect has (``_ev`` never returns ``None`` for it)."""
        ev = self._ev(ga_type, **fields)
        assert ev is not None, ga_type
        return ev

    # ------------------------------------------------------------------ session / errors
    def session_created(self, session: Mapping[str, Any], *, transcription: bool = False) -> Event:
        """``session`` comes from :func:`session_to_wire` for the same dialect. `transcription`:
        a transcription-only connection, whose events the beta names ``transcription_session.*``
        (GA keeps ``session.*``, with a session of type ``transcription``)."""
        return self._session("created", session, transcription)

    def session_updated(self, session: Mapping[str, Any], *, transcription: bool = False) -> Event:
        return self._session("updated", session, transcription)

    def _session(self, what: str, session: Mapping[str, Any], transcription: bool) -> Event:
        if transcription and self.flavor is Flavor.BETA:
            return self._named(f"transcription_session.{what}", session=dict(session))
        return self._every(f"session.{what}", session=dict(session))

    def error(self, message: str, *, code: str | None = None, param: str | None = None,
              event_id: str | None = None,
              type: Literal["invalid_request_error", "server_error"] | str = "invalid_request_error") -> Event:
        """``event_id`` is the id of the client event that caused the error, if any."""
        return self._every("error", error={"type": type, "code": code, "message": message, "param": param,
                                        "event_id": event_id})

    def error_from(self, err: ProtocolError) -> Event:
        return self.error(err.message, code=err.code, param=err.param, event_id=err.event_id)

    def warning(self, message: str, *, code: str = "unsupported_feature", param: str | None = None,
                event_id: str | None = None) -> Event:
        if self.flavor is Flavor.AZURE:
            return self._every("warning", warning={"message": message, "code": code, "param": param})
        return self.error(message, code=code, param=param, event_id=event_id)

    def rate_limits_updated(self, rate_limits: Sequence[Mapping[str, Any]]) -> Event | None:
        """``rate_limits``: ``[{"name": "requests"|"tokens", "limit", "remaining", "reset_seconds"}]``."""
        return self._ev("rate_limits.updated", rate_limits=[dict(r) for r in rate_limits])

    # ------------------------------------------------------------------ input audio buffer
    def input_audio_buffer_speech_started(self, audio_start_ms: int, item_id: str) -> Event:
        return self._every("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id)

    def input_audio_buffer_speech_stopped(self, audio_end_ms: int, item_id: str) -> Event:
        return self._every("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)

    def input_audio_buffer_committed(self, item_id: str, previous_item_id: str | None = None) -> Event:
        return self._every("input_audio_buffer.committed", previous_item_id=previous_item_id, item_id=item_id)

    def input_audio_buffer_cleared(self) -> Event:
        return self._every("input_audio_buffer.cleared")

    def input_audio_buffer_timeout_triggered(self, audio_start_ms: int, audio_end_ms: int,
                                             item_id: str) -> Event | None:
        """GA only (idle timeout of server VAD)."""
        return self._ev("input_audio_buffer.timeout_triggered", audio_start_ms=audio_start_ms,
                        audio_end_ms=audio_end_ms, item_id=item_id)

    def output_audio_buffer_started(self, response_id: str) -> Event:
        """WebRTC: the server's outbound audio track began playing this response."""
        return self._every("output_audio_buffer.started", response_id=response_id)

    def output_audio_buffer_stopped(self, response_id: str) -> Event:
        """WebRTC: the response's audio has all been sent and the outbound buffer is empty."""
        return self._every("output_audio_buffer.stopped", response_id=response_id)

    def output_audio_buffer_cleared(self, response_id: str) -> Event:
        """Azure's event carries no ``response_id``."""
        if self.flavor is Flavor.AZURE:
            return self._every("output_audio_buffer.cleared")
        return self._every("output_audio_buffer.cleared", response_id=response_id)

    # ------------------------------------------------------------------ conversation
    def conversation_item_added(self, item: Mapping[str, Any], previous_item_id: str | None = None) -> Event:
        """GA ``conversation.item.added``; beta/Azure ``conversation.item.created``."""
        return self._every("conversation.item.added", previous_item_id=previous_item_id, item=dict(item))

    def conversation_item_done(self, item: Mapping[str, Any], previous_item_id: str | None = None) -> Event | None:
        """GA only; beta/Azure have no ``conversation.item.done`` (returns None)."""
        return self._ev("conversation.item.done", previous_item_id=previous_item_id, item=dict(item))

    def conversation_item_retrieved(self, item: Mapping[str, Any]) -> Event:
        return self._every("conversation.item.retrieved", item=dict(item))

    def conversation_item_deleted(self, item_id: str) -> Event:
        return self._every("conversation.item.deleted", item_id=item_id)

    def conversation_item_truncated(self, item_id: str, content_index: int, audio_end_ms: int) -> Event:
        return self._every("conversation.item.truncated", item_id=item_id, content_index=content_index,
                        audio_end_ms=audio_end_ms)

    def input_audio_transcription_delta(self, item_id: str, content_index: int, delta: str) -> Event:
        return self._every("conversation.item.input_audio_transcription.delta", item_id=item_id,
                        content_index=content_index, delta=delta)

    def input_audio_transcription_completed(self, item_id: str, content_index: int, transcript: str, *,
                                            usage: Mapping[str, Any] | None = None,
                                            audio_seconds: float = 0.0) -> Event:
        """OpenAI requires ``usage``: pass token usage, or the audio duration is reported
        as ``{"type": "duration", "seconds": audio_seconds}``. Azure has no usage field."""
        ev = self._ev("conversation.item.input_audio_transcription.completed", item_id=item_id,
                      content_index=content_index, transcript=transcript)
        assert ev is not None
        if self.flavor is not Flavor.AZURE:
            ev["usage"] = dict(usage) if usage is not None else {"type": "duration", "seconds": float(audio_seconds)}
        return ev

    def input_audio_transcription_failed(self, item_id: str, content_index: int, message: str, *,
                                         code: str | None = "transcription_failed",
                                         type: str = "transcription_error") -> Event:
        return self._every("conversation.item.input_audio_transcription.failed", item_id=item_id,
                        content_index=content_index,
                        error={"type": type, "code": code, "message": message, "param": None})

    # ------------------------------------------------------------------ responses
    def response_created(self, response: Mapping[str, Any]) -> Event:
        """``response`` comes from :func:`response_object`."""
        return self._every("response.created", response=dict(response))

    def response_done(self, response: Mapping[str, Any]) -> Event:
        return self._every("response.done", response=dict(response))

    def response_output_item_added(self, response_id: str, output_index: int, item: Mapping[str, Any]) -> Event:
        return self._every("response.output_item.added", response_id=response_id, output_index=output_index,
                        item=dict(item))

    def response_output_item_done(self, response_id: str, output_index: int, item: Mapping[str, Any]) -> Event:
        return self._every("response.output_item.done", response_id=response_id, output_index=output_index,
                        item=dict(item))

    def response_content_part_added(self, response_id: str, item_id: str, output_index: int,
                                    content_index: int, part: Mapping[str, Any]) -> Event:
        """``part`` comes from :func:`event_part`."""
        return self._every("response.content_part.added", response_id=response_id, item_id=item_id,
                        output_index=output_index, content_index=content_index, part=dict(part))

    def response_content_part_done(self, response_id: str, item_id: str, output_index: int,
                                   content_index: int, part: Mapping[str, Any]) -> Event:
        return self._every("response.content_part.done", response_id=response_id, item_id=item_id,
                        output_index=output_index, content_index=content_index, part=dict(part))

    def _content(self, ga_type: str, response_id: str, item_id: str, output_index: int, content_index: int,
                 **extra: Any) -> Event:
        return self._every(ga_type, response_id=response_id, item_id=item_id, output_index=output_index,
                        content_index=content_index, **extra)

    def output_audio_delta(self, response_id: str, item_id: str, output_index: int, content_index: int,
                           delta: str) -> Event:
        """``delta`` is base64 audio in the session's output format (``AudioFormat.encode``)."""
        return self._content("response.output_audio.delta", response_id, item_id, output_index, content_index,
                             delta=delta)

    def output_audio_done(self, response_id: str, item_id: str, output_index: int, content_index: int) -> Event:
        return self._content("response.output_audio.done", response_id, item_id, output_index, content_index)

    def output_audio_transcript_delta(self, response_id: str, item_id: str, output_index: int,
                                      content_index: int, delta: str) -> Event:
        return self._content("response.output_audio_transcript.delta", response_id, item_id, output_index,
                             content_index, delta=delta)

    def output_audio_transcript_done(self, response_id: str, item_id: str, output_index: int,
                                     content_index: int, transcript: str) -> Event:
        return self._content("response.output_audio_transcript.done", response_id, item_id, output_index,
                             content_index, transcript=transcript)

    def output_text_delta(self, response_id: str, item_id: str, output_index: int, content_index: int,
                          delta: str) -> Event:
        return self._content("response.output_text.delta", response_id, item_id, output_index, content_index,
                             delta=delta)

    def output_text_done(self, response_id: str, item_id: str, output_index: int, content_index: int,
                         text: str) -> Event:
        return self._content("response.output_text.done", response_id, item_id, output_index, content_index,
                             text=text)

    def function_call_arguments_delta(self, response_id: str, item_id: str, output_index: int, call_id: str,
                                      delta: str) -> Event:
        return self._every("response.function_call_arguments.delta", response_id=response_id, item_id=item_id,
                        output_index=output_index, call_id=call_id, delta=delta)

    def function_call_arguments_done(self, response_id: str, item_id: str, output_index: int, call_id: str,
                                     name: str, arguments: str) -> Event:
        """The beta event has no ``name``; GA and Azure carry it."""
        ev = self._ev("response.function_call_arguments.done", response_id=response_id, item_id=item_id,
                      output_index=output_index, call_id=call_id, arguments=arguments)
        assert ev is not None
        if self.flavor is not Flavor.BETA:
            ev["name"] = name
        return ev

    # ------------------------------------------------------------------ MCP (GA and Azure; None in beta)
    def mcp_list_tools_in_progress(self, item_id: str) -> Event | None:
        return self._ev("mcp_list_tools.in_progress", item_id=item_id)

    def mcp_list_tools_completed(self, item_id: str) -> Event | None:
        return self._ev("mcp_list_tools.completed", item_id=item_id)

    def mcp_list_tools_failed(self, item_id: str) -> Event | None:
        return self._ev("mcp_list_tools.failed", item_id=item_id)

    def mcp_call_arguments_delta(self, response_id: str, item_id: str, output_index: int,
                                 delta: str) -> Event | None:
        return self._ev("response.mcp_call_arguments.delta", response_id=response_id, item_id=item_id,
                        output_index=output_index, delta=delta)

    def mcp_call_arguments_done(self, response_id: str, item_id: str, output_index: int,
                                arguments: str) -> Event | None:
        return self._ev("response.mcp_call_arguments.done", response_id=response_id, item_id=item_id,
                        output_index=output_index, arguments=arguments)

    def mcp_call_in_progress(self, item_id: str, output_index: int) -> Event | None:
        return self._ev("response.mcp_call.in_progress", item_id=item_id, output_index=output_index)

    def mcp_call_completed(self, item_id: str, output_index: int) -> Event | None:
        return self._ev("response.mcp_call.completed", item_id=item_id, output_index=output_index)

    def mcp_call_failed(self, item_id: str, output_index: int) -> Event | None:
        return self._ev("response.mcp_call.failed", item_id=item_id, output_index=output_index)
