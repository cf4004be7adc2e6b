"""A session's engine events -> the small live events a follower reads (`GET .../events`).

    session.state           -> conversation.state   {"state"}   idle | user_speaking | user_paused | thinking | speaking
    user.transcript_delta   -> transcript.delta     {"item_id", "text", "language"}  (the whole hypothesis so far)
    user.transcript         -> transcript.done      {"item_id", "text", "language", "typed"}
    agent.response_started  -> reply.started        {"response_id", "item_id"}
    agent.text_delta        -> reply.delta          {"response_id", "item_id", "delta"}
    agent.response_done     -> reply.done           {"response_id", "item_id", "text", "status", "interrupted"}
    (the session ends)      -> conversation.ended   {"reason"}

`typed` is true for words the client sent as text (a Realtime `conversation.item.create` user
message, the text chat), false for a spoken turn's transcript.
`text` of `reply.done` is what the listener heard (an interrupted reply is cut where it was cut).
A speculative reply that was thrown away never reaches the bus, so never a follower. The
listener reads only `ev.type` and `ev.to_json()` (the engine's public wire shape); `publish_session`
also declares the live events a reader of the session's live partials while a follower is
connected (`transcript.delta` is part of the contract; engine/partial_readers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from moksori.cluster.live import LiveEvents

if TYPE_CHECKING:
    from moksori.engine.session import Session

_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "session.state": ("conversation.state", ("state",)),
    "user.transcript_delta": ("transcript.delta", ("item_id", "text", "language")),
    "user.transcript": ("transcript.done", ("item_id", "text", "language")),
    "agent.response_started": ("reply.started", ("response_id", "item_id")),
    "agent.text_delta": ("reply.delta", ("response_id", "item_id", "delta")),
    "agent.response_done": ("reply.done", ("response_id", "item_id", "text", "status", "interrupted")),
}


def live_listener(live: LiveEvents, conversation_id: str) -> Callable[[Any], None]:
    """A session-bus listener publishing `conversation_id`'s live events (never raises, never waits)."""

    def on_event(ev: Any) -> None:
        mapped = _FIELDS.get(ev.type)
        if mapped is None:
            return
        name, fields = mapped
        wire = ev.to_json()
        data = {f: wire.get(f) for f in fields}
        if name == "transcript.done":
            if wire.get("final") is False:
                return
            data["typed"] = bool(wire.get("typed"))
        live.publish(conversation_id, name, data)

    return on_event


def publish_session(session: Session, live: LiveEvents, conversation_id: str) -> None:
    """`session`'s live events go out under `conversation_id`; its live partials are decoded
    while someone follows them (setting `stt.partials=auto`)."""
    session.bus.listen(live_listener(live, conversation_id))
    session.partials.readers.add("live events", lambda: live.followed(conversation_id))
